"""The prompts a server can serve, and which of them are on the device.

Available: the runs and adapters named on the command line or loaded through POST /v1/prompts, and
every run and adapter directly under `--prompts DIR` (found by name when first asked for, listed by
a scan). Resident: the `--max-resident` most recently used, their parameters in inference form and
their heads on the device (served by the engine); a prompt used less recently is evicted to the
host (its parameters as numpy arrays; its heads stay in the prompt cache's directory on disk), and
its next request loads it back from there rather than from its run.

Loads run on loader threads, never on the decode loop: a request for a cold prompt waits for its
own load (reading the checkpoint, the inference form, the heads its requests attend to), while the
rows of other prompts keep decoding; concurrent requests for one prompt share one load. A request
holds the `Served` it was admitted with, so evicting or unloading a prompt never breaks a request
in flight (its device arrays are freed when its last request ends).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from jaxprompt.serving.options import BadRequest, not_found
from jaxprompt.serving.prompts import Source, entry_names, names_of, read, scan

LOADERS = 4  # loads that run at once, beside the decode loop (a burst of more cold prompts queues for a loader)


class Library:
    def __init__(self, engine, base, which: str = "best", max_resident: int = 64, directory: str | None = None):
        self.engine, self.base, self.which, self.max_resident = engine, base, which, max_resident
        self.directory = directory
        self.explicit: dict[str, Source] = {}  # named on the command line or by POST /v1/prompts
        self.resident: OrderedDict[str, object] = OrderedDict()  # name -> Served, least recently used first
        self.on_host: dict[str, tuple] = {}  # name -> (session, prompt as numpy), read before
        self.loads = self.evictions = 0
        self._loading: dict[str, Future] = {}
        self._scanned: dict = {}  # the directory's entries as last read (`prompts.scan`)
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(LOADERS, thread_name_prefix="jaxprompt-loader")

    # ---- what is available ---------------------------------------------------------------------

    def available(self) -> dict[str, Source]:
        """Every prompt this server can serve, by name (the command line's and POST's first)."""
        found = scan(self.directory, self._scanned) if self.directory else {}
        return {**found, **self.explicit}

    def find(self, name: str) -> Source | None:
        with self._lock:
            if name in self.explicit:
                return self.explicit[name]
        if not self.directory:
            return None
        entry = name.split("/", 1)[0].split("@", 1)[0]  # a run's directory: NAME, NAME@k, NAME/TASK
        return entry_names(self.directory, entry, self._scanned).get(name)

    def add(self, name: str, path: str) -> list[str]:
        """Serves the run or adapter at `path` as `name` (its members and tasks under their own
        names), loaded now. Refused if a prompt has that name."""
        sources = names_of(name, path)
        taken = [n for n in sources if n in self.engine.prompts or n in self.explicit or n == self.engine.model_id]
        if taken:
            raise BadRequest(f"a prompt named {taken[0]!r} is already served; DELETE /v1/prompts/{taken[0]} first",
                             409, "name")
        for view in sources:
            self._load(view, sources[view], sources)
        with self._lock:
            self.explicit.update(sources)
        return list(sources)

    def remove(self, name: str) -> None:
        """Unloads `name` (and forgets it, unless it comes from the --prompts directory)."""
        with self._lock:
            known = name in self.resident or name in self.explicit
            if not known or name == self.engine.model_id:
                raise not_found(f"no loaded prompt {name!r}", "name")
            self._drop(name)
            self.explicit.pop(name, None)
            self.on_host.pop(name, None)

    # ---- loading ---------------------------------------------------------------------------------

    def acquire(self, name: str) -> Future:
        """The prompt `name` as served (a future: done at once if resident, else when loaded).
        Unknown: a 404 naming what is served."""
        with self._lock:
            served = self.resident.get(name)
            if served is not None:
                self.resident.move_to_end(name)
                return _done(served)
            if name == self.engine.model_id:
                return _done(self.engine.prompts[name])
            if name in self._loading:
                return self._loading[name]
        source = self.find(name)
        if source is None:
            raise not_found(f"unknown model {name!r}; GET /v1/models lists what is served")
        with self._lock:
            if name not in self._loading:
                self._loading[name] = self._pool.submit(self._load_once, name, source)
            return self._loading[name]

    def _load_once(self, name: str, source: Source):
        try:
            return self._load(name, source)
        finally:
            with self._lock:
                self._loading.pop(name, None)

    def _load(self, name: str, source: Source, siblings: dict[str, Source] | None = None):
        """Reads `name` (from the host if it was resident before, else from its path, with the
        prompts that share it), prepares it on the device with its heads, then serves it."""
        with self._lock:
            held = self.on_host.get(name)
        if held is None:
            if siblings is None and self.directory and source.path.startswith(self.directory):
                siblings = entry_names(self.directory, os.path.basename(source.path), self._scanned)
            siblings = {k: v for k, v in (siblings or {name: source}).items() if v.path == source.path}
            read_now = read(self.engine, self.base, siblings, self.which)
            with self._lock:
                self.on_host.update(read_now)
            held = read_now[name]
        session, prompt = held
        try:
            served = self.engine.prepare(name, session, prompt)
        except ValueError as e:
            raise BadRequest(f"{source.path}: {e}", param="model") from None
        self._heads(served)
        with self._lock:
            self.engine.prompts[name] = served
            self.resident[name] = served
            self.resident.move_to_end(name)
            self.loads += 1
            while len(self.resident) > self.max_resident:
                self._drop(next(iter(self.resident)))
                self.evictions += 1
        return served

    def _heads(self, served) -> None:
        """The heads its requests attend to, into the prompt cache now (not in the decode loop):
        a raw text's (its leading virtual tokens) and a templated input's."""
        from jaxprompt.inference.requests import Request

        probes = [served.warm_up_request()]
        if probes[0].raw and served.session is not None:
            probes.append(Request(served.name, row=_probe_row(served.session.task), sampling=probes[0].sampling))
        for request in probes:
            try:
                self.engine.row(request, served)
            except ValueError:  # no short input fits this template: its head is computed on first use
                pass

    def _drop(self, name: str) -> None:
        self.resident.pop(name, None)
        self.engine.prompts.pop(name, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _probe_row(task) -> dict:
    return {f: ("" if f in task.template.target_fields else "a") for f in task.fields}


def _done(value) -> Future:
    future = Future()
    future.set_result(value)
    return future
