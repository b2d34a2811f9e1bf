"""The DICOM SCP: Modality Worklist C-FIND, MPPS N-CREATE / N-SET, and C-ECHO, on one AE.

Threads and the event loop. pynetdicom serves every association in a thread of its own and calls the
handlers there, blocking. The services (asyncpg pool, Redis, the room queues) live on one asyncio
loop — the role's own in `python -m app dicom`, the test's in the tests. A handler hands its work to
that loop with `asyncio.run_coroutine_threadsafe` and waits for the result (at most
`request_timeout_s`, then it answers with a failure status and the coroutine is cancelled). The loop
never blocks on pynetdicom: the server is started from the loop (binding is immediate) and stopped
from a worker thread (`asyncio.to_thread`), since stopping may wait for associations whose handlers
wait for the loop. So: never call a handler, or anything that waits for one (a blocking SCU against
this server), on the loop's own thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from app.db import dicom_repo
from app.integrations.dicom.mpps import PROCESSING_FAILURE, MppsService, Outcome
from app.integrations.dicom.settings import DicomSettings
from app.integrations.dicom.worklist import QueryError, WorklistService

if TYPE_CHECKING:
    from app.services import Services

logger = logging.getLogger(__name__)

T = TypeVar("T")

# SOP classes (pynetdicom.sop_class defines them at run time, out of mypy's sight).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"

FIND_PENDING = 0xFF00
FIND_CANCELLED = 0xFE00
FIND_IDENTIFIER_MISMATCH = 0xA900
FIND_UNABLE_TO_PROCESS = 0xC000


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


class DicomServer:
    """One AE answering worklist queries and MPPS on `settings.host:port` (port 0: any free port)."""

    def __init__(
        self,
        worklist: WorklistService,
        mpps: MppsService,
        settings: DicomSettings,
        *,
        known_callers: list[str] | None = None,
    ) -> None:
        self.worklist = worklist
        self.mpps = mpps
        self.settings = settings
        self.known_callers = known_callers or []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadedAssociationServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("DICOM server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Start listening (call it on the services' event loop); returns the bound address."""
        self._loop = asyncio.get_running_loop()
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_supported_context(MODALITY_WORKLIST_FIND)
        ae.add_supported_context(MPPS)
        ae.add_supported_context(VERIFICATION)
        ae.require_called_aet = True
        if self.settings.known_callers_only:
            ae.require_calling_aet = list(self.known_callers)
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_N_CREATE, self._on_create),
            (evt.EVT_N_SET, self._on_set),
        ]
        self._server = ae.start_server((self.settings.host, self.settings.port), block=False, evt_handlers=handlers)
        host, port = self.address
        logger.info("DICOM SCP %s listening on %s:%d (worklist, MPPS, echo)", self.settings.ae_title, host, port)
        return host, port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            logger.info("DICOM SCP stopped")

    # -- the bridge ---------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("DICOM server not started")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(self.settings.request_timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    @staticmethod
    def _caller(event: evt.Event) -> str:
        return str(event.assoc.requestor.ae_title).strip()

    # -- handlers (pynetdicom's threads) -------------------------------------------------------------

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            identifier = event.identifier
            answers = self._call(self.worklist.find(identifier))
        except QueryError as exc:
            logger.info("worklist query from %s refused: %s", self._caller(event), exc)
            yield _status(FIND_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:
            logger.exception("worklist query from %s failed", self._caller(event))
            yield _status(FIND_UNABLE_TO_PROCESS, type(exc).__name__), None
            return
        logger.info("worklist query from %s: %d entries", self._caller(event), len(answers))
        for ds in answers:
            if event.is_cancelled:
                yield FIND_CANCELLED, None
                return
            yield FIND_PENDING, ds

    def _on_create(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        uid = cast(N_CREATE, event.request).AffectedSOPInstanceUID
        outcome = self._mpps(
            lambda: self.mpps.create(str(uid) if uid else None, event.attribute_list, self._caller(event))
        )
        return outcome.status_dataset(), outcome.attributes

    def _on_set(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID)
        outcome = self._mpps(lambda: self.mpps.set(uid, event.modification_list, self._caller(event)))
        return outcome.status_dataset(), outcome.attributes

    def _mpps(self, make: Any) -> Outcome:
        try:
            outcome: Outcome = self._call(make())
        except Exception as exc:
            logger.exception("MPPS request failed")
            return Outcome(PROCESSING_FAILURE, type(exc).__name__)
        return outcome


def server_for(services: Services, settings: DicomSettings, *, known_callers: list[str] | None = None) -> DicomServer:
    """A DICOM server on the services' pool and room queues."""
    b = services.settings.booking
    worklist = WorklistService(services.pool, b.hospital_id, ZoneInfo(b.timezone), settings.max_results)
    mpps = MppsService(services.pool, services.queues, b.hospital_id)
    return DicomServer(worklist, mpps, settings, known_callers=known_callers)


async def run_dicom(services: Services, settings: DicomSettings, stop: asyncio.Event) -> None:
    """The `dicom` role: serve until `stop` is set (or the task is cancelled)."""
    callers = await dicom_repo.station_ae_titles(services.pool, services.settings.booking.hospital_id)
    server = server_for(services, settings, known_callers=callers)
    server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
