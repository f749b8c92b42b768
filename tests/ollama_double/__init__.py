"""A faithful test double of the Ollama HTTP API parts loraship uses (/work/shared/OLLAMA_API.md).

    with OllamaDouble(tmp_path / "ollama") as ollama:
        client = ollama_client.Client(host=ollama.url)

It stores blobs at <dir>/blobs/sha256-<hex> and manifests at
<dir>/manifests/<host>/<namespace>/<model>/<tag> exactly as a real server does, answers
with the same status codes and error texts, and really generates: /api/chat and
/api/generate render the model's TEMPLATE with Go's own text/template (gorender/, the way
Ollama's template package executes it) and run the GGUF blob with llama-cpp-python. Names,
parameters and templates are checked by the double's own code (names.py, params.py,
gorender/), never by loraship's, and tests/test_ollama_recordings.py replays what a real
server did (../shared/ollama-recordings/) against it. /api/push and /api/pull
speak the Docker Registry HTTP API v2 to a real registry as Ollama's upload.go, download.go
and images.go do, including pull's rule that blob downloads redirect to another host name.

Not implemented (501, never silently ignored): format, tools, images, suffix, think, and
registry authentication. A prompt longer than num_ctx is an error here; a real server drops
old messages instead.

Faults for tests: `double.faults.drop_upload_after = N` resets the connection after N
bytes of the next blob upload (no blob is stored); `double.faults.fail_next(method,
path, status, message)` answers the next matching request with that error.
`double.requests` records (method, path) of every request, `double.prompts` every prompt
the runner was given. `double.retry_unit_s` scales
Ollama's 2**try-second registry retry sleeps (same retries, less waiting).

Modules, by concern:
    server.py           HTTP plumbing: routes, bodies, JSON / NDJSON answers
    double.py           OllamaDouble: lifecycle, lookups, /api/blobs
    blobs_manifests.py  the on-disk store and manifests
    models.py           create, show, tags, copy, delete
    chat.py             chat and generate through llama.cpp
    gorender.py         templates executed by Go (gorender/main.go); names.py: Ollama's name grammar
    push_pull.py        push and pull; upload.py, download.py, transfer.py, registry_http.py
                        port the registry side of Ollama's server/
    goenc.py, gguf_meta.py, params.py, faults.py   encodings, GGUF metadata, request fields, errors
"""

from .blobs_manifests import Model, Store
from .double import VERSION, OllamaDouble
from .faults import Faults, HTTPError

__all__ = ["VERSION", "Faults", "HTTPError", "Model", "OllamaDouble", "Store"]
