"""The metadata store: tables, connections and schema migrations."""
