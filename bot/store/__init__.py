"""Durable state: the SQLite file (`db`), the quota ledger (`quota`) and their settings sections."""

from bot.store.db import open_db, transaction
from bot.store.quota import AuditRow, LedgerRow, QuotaBook
from bot.store.settings import QuotaSettings, StorageSettings

__all__ = ["AuditRow", "LedgerRow", "QuotaBook", "QuotaSettings", "StorageSettings", "open_db", "transaction"]
