"""The traceability archive: one row per judged frame (and every event) in SQLite or PostgreSQL, reject
images beside it, retention by age and free disk, and the queries an audit needs (docs/archive.md).

config  ArchiveConfig (pydantic, no database import: runtime.line.config imports it)
schema  the tables (SQLAlchemy Core) and the versioned migrations
images  atomic JPEG frame / PNG mask files named by time, camera and frame id
writer  ArchiveSink: the daemon's sink, one writer thread and one connection
retention  oldest rows and their files first, by age and by free disk
query   rows by time / product / verdict / lot, as dicts, CSV or JSON, and the audit export
"""
