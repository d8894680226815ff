"""The replay: the chunk store on disk, the samples-per-insert limiter, the thread-safe service,
and (in ``remote``, the one module that imports Ray) the replay as a Ray actor.
"""
