"""Run a batch generator in a background thread, a few items ahead of the consumer."""
import queue
import threading

THREAD_NAME = "glow-data-prefetch"
_ITEM, _DONE, _ERROR = "item", "done", "error"
_POLL_SECONDS = 0.05


def prefetched(produce, depth=2):
    """Yield the items of the generator produce(), prepared by a worker thread.

    The queue holds at most `depth` items.  An exception in the worker is
    re-raised here.  Closing this generator early (or dropping it) stops the
    worker, which is joined before close() returns.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_work, args=(produce, items, stop), name=THREAD_NAME)
    worker.daemon = True  # never keeps the interpreter alive
    worker.start()
    try:
        while True:
            kind, value = items.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


def _work(produce, items, stop):
    source = produce()
    try:
        for item in source:
            if not _put(items, (_ITEM, item), stop):
                return
        _put(items, (_DONE, None), stop)
    except Exception as exc:  # handed over to the consumer, which re-raises it
        _put(items, (_ERROR, exc), stop)
    finally:
        source.close()


def _put(items, entry, stop):
    """Put entry, waiting while the queue is full; False if told to stop meanwhile."""
    while not stop.is_set():
        try:
            items.put(entry, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
