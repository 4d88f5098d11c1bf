"""Check results across pytest-xdist workers, gathered by the controller.

Under ``pytest --distill -n N`` the checks run in worker processes, each with its
own :class:`~distill_eval.session.DistillSession`; the controller computes nothing.
So that it can still write results.json, summary.md and report.html once:

- a worker attaches each check's result to the setup report of its item, as the
  plain-JSON attribute ``report.distill_eval``; xdist serialises a report's
  attributes, so it reaches the controller (and, being no user property, stays
  out of JUnit XML);
- a worker sends the provenance of the models and datasets it touched, and the
  checks ``-k``/``-m`` deselected, in ``config.workeroutput`` when it finishes;
- the controller's :class:`Gatherer` receives both and, just before the plugin
  writes the reports, fills its session with the results in collection order,
  whichever worker ran which check. Checks draw their random numbers from
  per-check seeds, so the values equal a serial run's.

A serial run registers nothing from this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from distill_eval.results import CheckResult
from distill_eval.session import DistillSession

__all__ = ["ATTRIBUTE", "Gatherer", "RemoteResult", "attach", "is_controller", "is_worker", "send_provenance"]

#: the report attribute (and workeroutput key) that carries a check's result
ATTRIBUTE = "distill_eval"


def is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process."""
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """True in the process that distributes tests to pytest-xdist workers (``-n N`` with N > 0)."""
    return not is_worker(config) and config.getoption("dist", "no") != "no"


@dataclass(frozen=True)
class RemoteResult:
    """A check result computed by a worker, as the controller receives it.

    It has what the reports, the verdict and ``--distill-accept`` read of a
    :class:`~distill_eval.results.CheckResult`; ``to_json`` returns the check's
    entry of results.json exactly as the worker wrote it.
    """

    suite: str
    file: str
    gate: str
    suite_gate: str
    id: str
    kind: str
    outcome: str
    message: str
    check: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return dict(self.check)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RemoteResult:
        check = data["check"]
        return cls(
            suite=data["suite"],
            file=data["file"],
            gate=data["gate"],
            suite_gate=data["suite_gate"],
            id=check["id"],
            kind=check["kind"],
            outcome=check["outcome"],
            message=check["message"],
            check=check,
        )


def _to_wire(result: CheckResult, index: int) -> dict[str, Any]:
    wire = {
        "index": index,
        "suite": result.suite,
        "file": result.file,
        "gate": result.gate,
        "suite_gate": result.suite_gate,
        "check": result.to_json(),
    }
    # Through JSON and back: execnet serialises only plain types (no numpy scalars, no str
    # subclasses such as torch.__version__), and the controller writes JSON anyway.
    return json.loads(json.dumps(wire, default=str))


def attach(report: pytest.TestReport, item: pytest.Item, result: CheckResult | None, *, again: bool = False) -> None:
    """In a worker: carry ``result`` on the setup report of ``item``, with the item's place in the collection.

    ``again`` carries it on the call report too, for a result the call changed (a warn check that
    a warnings filter turned into a failure); the controller keeps the last one it receives.
    """
    if result is None or report.when not in (("setup", "call") if again else ("setup",)):
        return
    setattr(report, ATTRIBUTE, _to_wire(result, item.session.items.index(item)))


def send_provenance(config: pytest.Config, state: DistillSession) -> None:
    """In a worker, at the end of its session: hand the controller what its models and datasets were."""
    provenance = {
        "models": state.model_provenance(),
        "datasets": state.dataset_provenance(),
        "deselected": state.deselected,  # each worker collects, and deselects, every check
        # stored-mode token regression records, for --distill-accept on the controller
        "token_records": [records_to_wire(key, record) for key, record in state.token_baseline_records.items()],
    }
    config.workeroutput[ATTRIBUTE] = json.loads(json.dumps(provenance, default=str))  # type: ignore[attr-defined]


def records_to_wire(key: tuple[str, str], record: Mapping[str, Any]) -> dict[str, Any]:
    """A token regression check's per-sequence record as JSON-able lists (exact: floats round-trip by repr)."""
    arrays = {
        name: {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.ravel().tolist()}
        for name, array in record["arrays"].items()
    }
    return {"suite": key[0], "check": key[1], "meta": dict(record["meta"]), "arrays": arrays}


def records_from_wire(wire: Mapping[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
    """What :func:`records_to_wire` sent: ``((suite, check id), {"meta", "arrays"})``."""
    arrays = {
        name: np.asarray(value["data"], dtype=value["dtype"]).reshape(value["shape"])
        for name, value in wire["arrays"].items()
    }
    return (wire["suite"], wire["check"]), {"meta": dict(wire["meta"]), "arrays": arrays}


class Gatherer:
    """The controller's collector of worker results; registered as a plugin by ``pytest_configure``."""

    def __init__(self, state: DistillSession):
        self.state = state
        self.received: dict[int, RemoteResult] = {}  # by place in the collection; --dist each sends duplicates

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, ATTRIBUTE, None)
        if isinstance(data, dict):
            self.received[data["index"]] = RemoteResult.from_wire(data)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        sent = getattr(node, "workeroutput", {}).get(ATTRIBUTE)
        if not sent:
            return
        for name, info in sent["models"].items():
            known = self.state.worker_models.get(name)
            # one worker may have served a model from the cache that another one loaded
            if known is None or (info.get("loaded") and not known.get("loaded")):
                self.state.worker_models[name] = info
        for name, info in sent["datasets"].items():
            self.state.worker_datasets.setdefault(name, info)
        for entry in sent.get("deselected", []):
            if entry not in self.state.deselected:
                self.state.deselected.append(entry)
        for wire in sent.get("token_records", []):
            key, record = records_from_wire(wire)
            self.state.token_baseline_records[key] = record

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # before the plugin's own sessionfinish writes the reports
        self.state.results[:] = [self.received[i] for i in sorted(self.received)]  # type: ignore[misc]
