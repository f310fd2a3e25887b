"""Everything about one provider account, as a train of its polls meets it.

    guard.py     the account's state fleet-wide, in Redis, shared by every worker
    rules.py     the pure rules: breaker, train size, bisection, budget holds, pace

Nothing here decides what becomes of an export: that is settling's (`export_poller.settle`).
"""
