"""Error types. Each message says what is wrong, where (file/field) and what to do."""


class KBError(Exception):
    """Base class: the CLI prints these as one clear line, never a traceback."""


class ConfigError(KBError):
    """A setting is missing or invalid; the message names the field."""


class ModelNotFoundError(KBError):
    """A model file or package is missing; the message names the package to install."""


class SourceError(KBError):
    """A whole source cannot be read (missing folder, bad export layout)."""


class ParseError(KBError):
    """One file cannot be parsed; ingest skips it and reports path + reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class IndexError_(KBError):
    """The index is missing, empty or unusable."""


class GeneratorError(KBError):
    """The language-model backend failed or is unreachable."""


class EmbeddingError(KBError):
    """The embedding backend failed or is unreachable (an OpenAI-compatible embedding server)."""


class IngestBusy(KBError):
    """Another ingest holds the ingest lock (a lock file, or a Postgres advisory lock)."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid
