"""Load campaigns: what ``loadtest/locustfile.py`` and ``loadtest/campaign.py`` run.

``campaign`` reads a campaign file and turns its shape into intended send times; ``plan``
funds senders and signs every transaction before the timed window; ``tracker`` follows the
committed blocks during the run; ``report`` closes the accounting, finds the knee and draws
the plots. Only ``tracker`` and the locustfile run under Locust (gevent); the rest is plain
Python that the tests call directly.
"""
