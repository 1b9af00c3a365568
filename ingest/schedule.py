"""Scheduled re-index: APScheduler runs ``reindex`` on the cron expression or interval in
``settings.schedule``.

Overlap is impossible twice over: inside one scheduler the job has ``max_instances=1`` and
``coalesce=True`` (missed runs collapse into one), and across processes (a manual
``kb reindex`` or a second scheduler) the ingest file lock makes a run that finds it taken
skip with a log line instead of waiting.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from kb_chatbot.core.errors import ConfigError, KBError
from kb_chatbot.core.settings import ScheduleConfig, Settings

log = logging.getLogger(__name__)

#: A run that misses its time (machine asleep, previous run still going) still runs within this.
MISFIRE_GRACE_S = 3600


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 (and 7) = Sunday


def _cron_day(token: str, expr: str) -> int:
    t = token.strip().lower()
    if t[:3] in _CRON_DAYS and (len(t) == 3 or t in ("sunday", "monday", "tuesday", "wednesday", "thursday",
                                                       "friday", "saturday")):
        return _CRON_DAYS.index(t[:3])
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t) % 7
    raise ConfigError(f"schedule.cron: {expr!r}: bad day of week {token!r} (use 0-7 or sun..sat)")


def crontab_weekdays(field: str, expr: str = "") -> str:
    """The crontab day-of-week field in APScheduler's terms.

    APScheduler 3's ``CronTrigger`` numbers weekdays from Monday = 0, standard crontab from
    Sunday = 0, and ``from_crontab`` passes the numbers through unchanged: "1-5" would run
    Tuesday to Saturday. So the field is expanded to the set of days and written as names.
    """
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_s = item.partition("/")
        try:
            step = int(step_s) if step_s else 1
        except ValueError:
            raise ConfigError(f"schedule.cron: {expr!r}: bad step in {item!r}") from None
        if step < 1:
            raise ConfigError(f"schedule.cron: {expr!r}: bad step in {item!r}")
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            a, _, b = base.partition("-")
            lo, hi = _cron_day(a, expr), _cron_day(b, expr)
            if b.strip() == "7":
                hi = 7
        else:
            lo = _cron_day(base, expr)
            hi = 6 if step_s else lo
        if hi < lo:
            raise ConfigError(f"schedule.cron: {expr!r}: day range {base!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if days == set(range(7)):
        return "*"
    order = [1, 2, 3, 4, 5, 6, 0]  # mon..sun
    return ",".join(_CRON_DAYS[d] for d in order if d in days)


def build_trigger(cfg: ScheduleConfig, timezone: Any = None) -> Any:
    """The APScheduler trigger for ``schedule.cron`` (wins) or ``schedule.interval_minutes``.

    The cron expression has standard crontab meaning (weekday 0 or 7 = Sunday)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if cfg.cron:
        minute, hour, day, month, dow = cfg.cron.split()
        try:
            return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                               day_of_week=crontab_weekdays(dow, cfg.cron), timezone=timezone)
        except ValueError as e:
            raise ConfigError(f"schedule.cron: {cfg.cron!r} is not a valid crontab expression ({e})") from None
    if cfg.interval_minutes:
        return IntervalTrigger(minutes=cfg.interval_minutes, timezone=timezone)
    raise ConfigError('no schedule configured: set schedule.cron (e.g. "0 2 * * *") or '
                      "schedule.interval_minutes in the settings file")


def run_reindex_once(settings: Settings, *, lock_timeout: float = 0.0, progress: Any = None) -> Any:
    """One scheduled reindex of every enabled source. Returns the IngestReport, or None when
    it was skipped (another ingest holds the lock) or failed; never raises (the scheduler
    must survive a bad night)."""
    from kb_chatbot.core.errors import IngestBusy
    from kb_chatbot.ingest.sync import sync_sources

    sources = [s for s in settings.sources if s.enabled]
    if not sources:
        log.warning("scheduled reindex skipped reason=no enabled sources in the settings")
        return None
    log.info("scheduled reindex starting sources=%s", ",".join(s.name for s in sources))
    try:
        report = sync_sources(settings, sources, progress=progress, lock_timeout=lock_timeout)
    except IngestBusy as e:
        log.warning("scheduled reindex skipped reason=%s", e)
        return None
    except KBError as e:
        log.error("scheduled reindex failed reason=%s", e)
        return None
    except Exception:
        log.exception("scheduled reindex failed")
        return None
    t = report.totals()
    log.info("scheduled reindex finished ok=%s added=%d updated=%d deleted=%d unchanged=%d failed=%d "
             "generation=%s report=%s", report.ok, t["added"], t["updated"], t["deleted"], t["unchanged"],
             t["failed"], report.current_generation, report.report_path)
    return report


def run_scheduler(settings: Settings, *, trigger: Any = None, job: Callable[[], Any] | None = None,
                  stop: threading.Event | None = None, install_signals: bool = True) -> None:
    """Run the schedule until SIGINT/SIGTERM (or ``stop`` is set). A running reindex is
    allowed to finish before returning; killing the process instead is also safe (the index
    only ever changes by an atomic publish)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = stop or threading.Event()
    trigger = trigger or build_trigger(settings.schedule)
    job = job or (lambda: run_reindex_once(settings))
    scheduler = BackgroundScheduler()
    scheduler.add_job(job, trigger, id="reindex", name="kb reindex", max_instances=1, coalesce=True,
                      misfire_grace_time=MISFIRE_GRACE_S)
    previous: dict[int, Any] = {}
    if install_signals:
        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("scheduler stopping signal=%s", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    scheduler.start()
    try:
        nxt = scheduler.get_job("reindex").next_run_time
        log.info("scheduler started trigger=%s next_run=%s", trigger, nxt.isoformat() if nxt else None)
        while not stop.wait(0.5):
            pass
    finally:
        log.info("scheduler shutting down (waiting for a running reindex to finish)")
        scheduler.shutdown(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("scheduler stopped")
