"""The one exception type users see: a clear, one-line message and exit status 2."""


class VaelabError(Exception):
    """Bad input or a bad setting. The CLI prints ``vaelab: error: <message>`` and exits 2.

    Messages are one line: what is wrong, and how to fix it.
    """
