"""The one exception type for user data mistakes; entry points print it as one line."""


class DataError(Exception):
    """Bad user input: the message names the file, line/row and field, and what is wrong."""
