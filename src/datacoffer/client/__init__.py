"""The Python client of Data Coffer: `Client`, its results (`models`) and errors (`errors`).

    from datacoffer.client import Client

    with Client("http://127.0.0.1:8080", "AKID…", "…") as dc:
        dc.create_coffer("reports-1250000000", ["ap-tianjin"])
        dc.upload_file("reports-1250000000", "2026/q3.pdf", "q3.pdf")
        dc.download_file("reports-1250000000", "2026/q3.pdf", "copy.pdf")
"""

from datacoffer.client import errors, models
from datacoffer.client.client import Client, ObjectReader
from datacoffer.client.credentials import Profile
from datacoffer.client.retry import RetryPolicy
from datacoffer.client.transfer import TransferConfig

__all__ = ["Client", "ObjectReader", "Profile", "RetryPolicy", "TransferConfig", "errors",
           "models"]
