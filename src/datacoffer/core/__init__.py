"""The domain core: identities, coffers and objects. Nothing here knows HTTP."""
