"""User-facing errors: the CLI prints their message on one line, the app shows it in the page."""


class UserError(Exception):
    """Bad input or a refused request; the message is shown to the user as is."""


class ModelNotFound(UserError):
    pass


class InputError(UserError):
    pass


class Cancelled(UserError):
    pass
