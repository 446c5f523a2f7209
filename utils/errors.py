"""The error types of user mistakes, at the bottom of the library: any layer raises them, and the
entry points print each as one line (`utils.run.user_errors`)."""


class ConfigError(ValueError):
    """A bad flag value; printed as one line by the entry point."""


class DataError(Exception):
    """Bad user input: the message names the file, line/row and field, and what is wrong."""


class TrainingHalted(Exception):
    """Training cannot go on without writing something wrong: a non-finite loss or weights, a
    reward source's non-finite or non-numeric score. Printed as one line; the run exits 3 and
    writes nothing after its last checkpoint."""


class CheckpointError(DataError):
    """A checkpoint resume cannot trust: none of the run's checkpoints verifies against its manifest,
    or a file holds more than plain data. A user error (exit 2): the message names the checkpoint
    and why."""


class WriteFailed(Exception):
    """Writing a checkpoint or the final export failed (a full disk, no permission). Printed as one
    line naming the folder and the cause; the partial files are removed, the previous checkpoint and
    export are untouched, and the run exits 4."""
