"""Everything about one provider account, as a train of its polls meets it.

    train.py     the train runner: a train's requests in waves, each answer read in order
    request.py   one request: the account's adapter, the threads a wave leaves from, its time
    gate.py      the account gate as one train sees it: holds, budgets, 429s, pace, breaker
    guard.py     the same gate fleet-wide, in Redis, shared by every worker
    bisect.py    bulk bisection: finding the one id that fails a whole bulk request
    rules.py     the pure rules behind them: breaker, train size, bisection, budget, pace

Nothing here decides what becomes of an export: that is settling's (`export_poller.settle`).
"""
