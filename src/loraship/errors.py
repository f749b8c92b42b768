"""One exception family. The CLI turns any of these into a single line on stderr.

Messages name the problem (file, line, field) and, where there is one, the fix.
"""


class LorashipError(Exception):
    """Base class: a problem the user can act on. Never shown as a traceback."""

    exit_code = 2


class ConfigError(LorashipError):
    """A config file or CLI flag has an unknown key, a wrong type or a bad value."""


class DataError(LorashipError):
    """A dataset row is invalid, or the data stage has nothing to produce."""


class VersionError(LorashipError):
    """A version does not exist, is incomplete, or the store is locked."""


class ToolchainError(LorashipError):
    """The llama.cpp converter or a library a stage needs is missing."""


class ExportError(LorashipError):
    """Merge, conversion, quantization or verification failed."""


class OllamaError(LorashipError):
    """The Ollama server is unreachable or refused a request."""


class GateError(LorashipError):
    """Promotion was refused because no passed gate covers the served digest."""


class GateFailed(LorashipError):
    """The comparison ran and the candidate did not pass: exit code 1, as CI expects."""

    exit_code = 1
