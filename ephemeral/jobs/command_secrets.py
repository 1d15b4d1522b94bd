"""The one rule for secrets in the words of a job's command line: a Ray job's entrypoint (the
form, ``ephemeral submit``, ``RayJobOperator``, ``RayJobs.submit``) and a Spark application's
arguments (``ephemeral spark-submit``, ``EphemeralSparkSubmitOperator``, ``spark_submit``).

A command line is stored and shown: Ray's job info and dashboard, the task log and rendered
fields, spark-submit's command line in ``ps`` on the host. So it holds no secret, by the rule a
job's own environment follows (``ephemeral.specs.models.literal_secret``):

- ``NAME=VALUE`` (``GH=ghp_...``, ``AWS_SECRET_ACCESS_KEY=...``, ``--token=...``,
  ``spark.hadoop.fs.s3a.secret.key=...``) whose value is a secret, by its shape or its name;
- a word that is one itself (a token or key by its shape, a URL with credentials, a PEM block);
- the word after an option that names a secret (``--token X``, ``--password X``,
  ``--api-key X``), unless a switch, a path or a tokenizer's markup (``--pad-token [PAD]``);
- the value of an HTTP header that carries a credential (``curl -H 'Authorization: Bearer X'``,
  ``'X-Api-Key: X'``), after its scheme when it has one, and the word after ``Bearer``.

A word of a command given as one string (``bash -c '... --token X'``) is judged by its own
words too. A value that only refers to a variable (``$HF_TOKEN``) is no secret: the secret stays
in the environment. Hashes and ids (``--commit 3f2a...``) are no secret: no name nor shape says so.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Callable, Sequence

from ephemeral.specs.models import (
    literal_secret,
    masked_secrets,
    secret_name,
    secret_value,
    shown_uri,
)
from ephemeral.specs.pip_credentials import credentials_problem

# Where a secret comes from instead (README, "The local backend": Environment).
SECRET_SOURCES = ("the cluster spec's runtimeEnv.env with secretKeyRef, "
                  "or fromEnv on the local backend")
COMMAND_SECRET_FIX = (
    "A command line is stored and shown (Ray's job info and dashboard, the task log and "
    "rendered fields, spark-submit's command line in ps), so it holds no secret. Pass it "
    f"through the job's environment instead, from {SECRET_SOURCES}; a spark-submit driver "
    "inherits a variable of the worker's environment that the deployment names in "
    "EPHEMERAL_JOB_ENV_ALLOW. The program reads the variable (os.environ) rather than an "
    "argument")

_OPTION = re.compile(r"-{1,2}[A-Za-z][A-Za-z0-9_.-]*")
# An HTTP header as a command sends it (curl -H 'Authorization: Bearer X', wget --header):
# the credential is its value, after the auth scheme when there is one.
_HEADER = re.compile(r"(?:-{1,2}[A-Za-z][A-Za-z0-9_.-]*=)?(?P<name>[A-Za-z][A-Za-z0-9_-]*):")
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "apikey"})
_ASSIGNMENT = re.compile(r"(?P<name>-{0,2}[A-Za-z_][A-Za-z0-9_.-]*)=(?P<value>.*)", re.S)
_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
_SPACE = re.compile(r"\s")
# What shlex splits a command at (its ``whitespace``), as the cluster's shell does: any other
# whitespace (U+00A0 from a web page or chat, U+2009, a vertical tab) is inside a word.
_SHELL_SPACE = frozenset(" \t\r\n")
# A word within a word within a word... (``bash -c "sh -c '...'"``) is judged this deep: each
# level's quoting triples the length, so depth 8 is a command of some 40,000 characters.
_MAX_DEPTH = 8
# The whitespace control characters, which have no name in unicodedata.
_CONTROL_NAMES = {"\x0b": "LINE TABULATION", "\x0c": "FORM FEED", "\x1c": "FILE SEPARATOR",
                  "\x1d": "GROUP SEPARATOR", "\x1e": "RECORD SEPARATOR",
                  "\x1f": "UNIT SEPARATOR", "\x85": "NEXT LINE"}


def command_words(command: str) -> list[str]:
    """The words of a command line as the shell reads them (``shlex.split``; whitespace-split
    when its quotes do not balance): an argv entrypoint's words come back at their index."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def character_name(c: str) -> str:
    """``U+00A0 NO-BREAK SPACE``: a character a message names (it may look like any other)."""
    return f"U+{ord(c):04X} " + (unicodedata.name(c, "") or _CONTROL_NAMES.get(c, "(unnamed)"))


def odd_space_problem(command: str) -> str | None:
    """Why ``command`` is refused for whitespace the shell does not split words at (a no-break
    space pasted from a web page, a thin space, a vertical tab), or None. The shell keeps it
    inside a word: ``python``, a no-break space and ``train.py`` are one program name, "not
    found" on the cluster once it was made. Names each such character and where it first is,
    not the text around it (it may be a secret)."""
    odd = [c for c in dict.fromkeys(command) if c.isspace() and c not in _SHELL_SPACE]
    if not odd:
        return None
    found = ", ".join(f"{character_name(c)} (character {command.index(c) + 1})" for c in odd)
    return (f"contains {found}: whitespace the shell does not split words at, so it would stay "
            "inside a word (a program or option name the cluster's shell or the program does "
            "not know). Replace it with an ordinary space; it usually comes from copying a "
            "command out of a web page, document or chat")


def _why_value(word: str) -> str | None:
    if credentials_problem(word) is not None:  # its own message quotes the word and a pip fix
        return "it has credentials in its URL (user-info or a signed URL's secret parameter)"
    return secret_value(word)


def _judged(word: str, option: str | None) -> tuple[str, str] | None:
    """(the word as shown, why it holds a secret), or None. ``option``: the secret-named option
    right before it."""
    if option is not None and not word.startswith("-") and not _VARIABLE.fullmatch(word) \
            and (slot := _secret_in_slot(option, word)) is not None:
        return "***", _why_value(word) or slot
    if (m := _ASSIGNMENT.fullmatch(word)) and not _VARIABLE.fullmatch(m["value"]):
        if (why := literal_secret(m["name"].lstrip("-"), m["value"])) is not None:
            return f"{m['name']}=***", _why_value(m["value"]) or why
    if (why := _why_value(word)) is not None:
        return shown_uri(word), why
    return None


def secret_words(words: Sequence[str], _depth: int = 0) -> list[tuple[int, str, str]]:
    """(index, the word masked, why) of each word that holds a secret (the module's rule)."""
    found: list[tuple[int, str, str]] = []
    option: str | None = None
    for i, word in enumerate(words):
        hit = _judged(word, option)
        if hit is None and _SPACE.search(word) and _depth < _MAX_DEPTH:
            # A command in a word (bash -c '...'). Only when splitting it gives other words: a
            # space shlex keeps in the word (U+00A0) would give the word itself back, forever.
            inner_words = command_words(word)
            inner = secret_words(inner_words, _depth + 1) if inner_words != [word] else []
            hit = inner[0][1:] if inner else None
        if hit is not None:
            found.append((i, *hit))
        option = _secret_slot(word, option)
    return found


def _secret_in_slot(before: str, word: str) -> str | None:
    """Why ``word``, after ``before`` (``_secret_slot``), is a secret, or None: a header's value
    other than its auth scheme and the word after ``Bearer`` whatever their shape (they have no
    name of their own to judge), an option's value by the option's name."""
    if before.endswith(":"):
        return None if word.lower() in _AUTH_SCHEMES else \
            f"it is the value of the header {before[:-1].rpartition('=')[2]}, which carries a " \
            "credential"
    if before.lower() == "bearer":
        return "it is a bearer token"
    if literal_secret(before.lstrip("-"), word) is None:
        return None
    return f"it is the value of {before}, which names a secret"


def _secret_slot(word: str, before: str | None) -> str | None:
    """``word`` when the word after it is a secret's place (an option naming a secret, a
    credential-carrying header, ``Bearer``), the header again after its auth scheme, or None."""
    if _OPTION.fullmatch(word):
        return word if secret_name(word.lstrip("-")) else None
    if (m := _HEADER.fullmatch(word)) is not None:
        name = m["name"]
        return word if name.lower() in _AUTH_HEADERS or secret_name(name) else None
    if before is not None and before.endswith(":") and word.lower() in _AUTH_SCHEMES:
        return before  # 'Authorization: Basic X': X is the credential
    return word if word.lower() == "bearer" else None


def secret_words_problem(words: Sequence[str], label: Callable[[int], str]) -> str | None:
    """Why the words are refused, naming each by ``label(index)`` and showing it masked, with
    the fix; or None."""
    found = secret_words(words)
    if not found:
        return None
    return "; ".join(f"{label(i)} {shown!r}: {why}" for i, shown, why in found) + \
        f". {COMMAND_SECRET_FIX}"


def masked_command(command: str) -> str:
    """``command`` as a message may show it: each secret word (``secret_words``) masked, the
    rest by ``masked_secrets``."""
    words = command_words(command)
    shown = {i: s for i, s, _ in secret_words(words)}
    if not shown:
        return masked_secrets(command)
    return " ".join(shown.get(i, masked_secrets(w)) for i, w in enumerate(words))
