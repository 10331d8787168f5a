"""Durable job records in Firestore: a write-behind mirror of Redis, and the history served from it.

- `records`: the document of a job and the Job back from it (pure);
- `mirror`: the write-behind from Redis, one writer per install under a Redis lease;
- `metrics`: its Prometheus collector;
- `history`: job history pages from Firestore, fresher Redis records preferred;
- `client`: the Firestore clients (a fresh one per mirror, one shared for reads).

Importing this package does not import google-cloud-firestore; the clients do, when first made.
"""

from comfyfleet.store.firestore.client import firestore_client
from comfyfleet.store.firestore.history import FirestoreHistory
from comfyfleet.store.firestore.metrics import MirrorCollector
from comfyfleet.store.firestore.mirror import BACKOFF_MAX_SECONDS, FirestoreMirror, backoff_seconds
from comfyfleet.store.firestore.records import job_from_record, job_record, workflow_summary

__all__ = [
    "BACKOFF_MAX_SECONDS",
    "FirestoreHistory",
    "FirestoreMirror",
    "MirrorCollector",
    "backoff_seconds",
    "firestore_client",
    "job_from_record",
    "job_record",
    "workflow_summary",
]
