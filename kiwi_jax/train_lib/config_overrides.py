"""``--config.a.b=value`` overrides of a locked config, with one-line errors.

ml_collections' ``config_flags`` applies ``--config.<key>`` overrides while
absl parses the command line: an unknown key surfaces as a long traceback
(or a bare ``AttributeError: "'lr'"``), and list-valued settings cannot be
overridden at all. ``parse_flags`` (an ``absl.app.run`` ``flags_parser``)
takes the overrides out of ``argv`` before absl sees them, lets absl load
the config file, then applies each override itself:

* an unknown key, at any depth, is one line naming it and the closest
  existing keys (``did you mean optimizer.learning_rate?``);
* values are read as the type of the setting they replace: ``true/false``
  for booleans, numbers, strings as typed, and Python literals for lists
  and tuples (``--config.demo.stage_steps=[2,8,2]``); list items are
  addressed as ``--config.kiwi.data.sources[0].weight=2``;
* ``--config.flag`` / ``--noconfig.flag`` set booleans, and
  ``--config.key VALUE`` works like ``--config.key=VALUE``.

Every mistake (and absl's own flag errors, and a config file that fails to
load) ends the program with ``<prog>: error: <one line>`` and exit code 2.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

_COMPONENT = re.compile(r"^([A-Za-z_]\w*)((?:\[-?\d+\])*)$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_MAX_LISTED_KEYS = 30


class ConfigOverrideError(ValueError):
  """A ``--config.*`` override names no setting or has a bad value."""


@dataclasses.dataclass
class Override:
  """One ``--config.<path>[=<value>]`` from the command line.

  Attributes:
    path: the dotted key path (``optimizer.learning_rate``).
    value: the text after ``=`` (None when there was none).
    negated: spelled ``--noconfig.<path>`` (a boolean set to False).
    next_token: the token after a value-less override, taken as its value
      unless the setting is a boolean (then it goes back to ``argv``).
  """

  path: str
  value: str | None = None
  negated: bool = False
  next_token: str | None = None


def split_overrides(
  argv: Sequence[str], name: str = "config"
) -> tuple[list[str], list[Override]]:
  """Splits ``argv`` into the arguments for absl and the overrides."""
  rest, overrides = [argv[0]], []
  index = 1
  while index < len(argv):
    token = argv[index]
    index += 1
    if token == "--":
      rest.extend(argv[index - 1 :])
      break
    body = (
      token[2:]
      if token.startswith("--")
      else (token[1:] if token.startswith("-") else "")
    )
    negated = body.startswith(f"no{name}.")
    if not (body.startswith(f"{name}.") or negated):
      rest.append(token)
      continue
    path, equals, value = body[len(name) + 1 + 2 * negated :].partition("=")
    override = Override(path, value if equals else None, negated)
    if (
      not equals
      and not negated
      and index < len(argv)
      and not argv[index].startswith("-")
    ):
      override.next_token = argv[index]
      index += 1
    overrides.append(override)
  return rest, overrides


def _is_group(node: Any) -> bool:
  return (
    hasattr(node, "keys")
    and hasattr(node, "__getitem__")
    and not (isinstance(node, (str, bytes)))
  )


def _similarity(typed: str, key: str) -> float:
  """How likely ``typed`` is a misspelling or abbreviation of ``key``."""
  typed, key = typed.lower(), key.lower()
  initials = "".join(part[0] for part in key.split("_") if part)
  if len(typed) > 1 and typed == initials:
    return 0.95  # lr -> learning_rate
  if key.startswith(typed) or typed.startswith(key):
    return 0.9
  ratio = difflib.SequenceMatcher(None, typed, key).ratio()
  remaining = iter(key)
  if (
    len(typed) > 1
    and typed[0] == key[0]
    and all(char in remaining for char in typed)
  ):
    ratio = max(ratio, 0.7)  # a subsequence: lrate -> learning_rate
  return ratio


def _names(path: str) -> list[str]:
  return [
    _COMPONENT.match(part).group(1) if _COMPONENT.match(part) else part
    for part in path.split(".")
  ]


def closest_keys(config: Any, path: str, limit: int = 3) -> list[str]:
  """Existing dotted keys closest to ``path``, best first (may be empty)."""

  def walk(node, names, prefix):
    keys = [str(k) for k in node.keys()]
    if names[0] in keys:
      candidates = [(1.0, names[0])]
    else:
      scored = sorted(
        ((_similarity(names[0], k), k) for k in keys), reverse=True
      )
      candidates = [(s, k) for s, k in scored if s >= 0.6][:limit]
    found = []
    for score, key in candidates:
      if len(names) == 1:
        found.append((score, prefix + key))
      elif _is_group(node[key]):
        found += [
          (score * s, p)
          for s, p in walk(node[key], names[1:], f"{prefix}{key}.")
        ]
    return sorted(found, key=lambda item: -item[0])[:limit]

  return [p for _, p in walk(config, _names(path), "")]


def _unknown_key(config: Any, path: str, group: str, node: Any) -> str:
  hints = [p for p in closest_keys(config, path) if p != path]
  if hints:
    return f"unknown config key {path}; did you mean {' or '.join(hints)}?"
  keys = sorted(str(k) for k in node.keys())
  listed = ", ".join(keys[:_MAX_LISTED_KEYS]) + (
    ", ..." if len(keys) > _MAX_LISTED_KEYS else ""
  )
  where = f"{group} has" if group else "the config has"
  return f"unknown config key {path}; {where}: {listed}."


def resolve(config: Any, path: str) -> tuple[Any, Any, Any]:
  """(container, key or index, current value) of the setting at ``path``.

  Raises:
    ConfigOverrideError: ``path`` names no setting (with the closest keys).
  """
  parent, key, node, done = None, None, config, ""
  for part in path.split("."):
    match = _COMPONENT.match(part)
    if not match:
      raise ConfigOverrideError(
        f"bad config key {path!r}: use dotted names with optional "
        f"[index]es, e.g. kiwi.data.sources[0].weight."
      )
    name, indices = match.group(1), match.group(2)
    if not _is_group(node):
      raise ConfigOverrideError(
        f"config key {done} is a setting ({done}={node!r}), not a group "
        f"with a key {name!r}; set it with --config.{done}=VALUE."
      )
    if name not in node:
      raise ConfigOverrideError(_unknown_key(config, path, done, node))
    parent, key, node = node, name, node[name]
    done = f"{done}.{name}" if done else name
    for index in re.findall(r"-?\d+", indices):
      if not isinstance(node, (list, tuple)):
        raise ConfigOverrideError(
          f"config key {done} is a {type(node).__name__}, not a list; "
          f"drop the [{index}]."
        )
      if not -len(node) <= int(index) < len(node):
        raise ConfigOverrideError(
          f"config key {done} has {len(node)} items; [{index}] is out of range."
        )
      parent, key, node = node, int(index), node[int(index)]
      done = f"{done}[{index}]"
  return parent, key, node


def parse_value(text: str, current: Any, path: str) -> Any:
  """``text`` read as the type of ``current`` (the setting's value)."""
  bad = lambda kind: ConfigOverrideError(  # noqa: E731
    f"config key {path} expects {kind}; got {text!r}."
  )
  if isinstance(current, bool):
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise bad("true or false")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a number") from None
  if isinstance(current, str):
    return text
  if _is_group(current):
    keys = ", ".join(sorted(str(k) for k in current.keys())[:_MAX_LISTED_KEYS])
    raise ConfigOverrideError(
      f"config key {path} is a group of settings ({keys}); set one with "
      f"--config.{path}.KEY=VALUE."
    )
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if isinstance(current, (list, tuple)):
      raise bad(
        "a list like [2, 8, 2]"
        if isinstance(current, list)
        else "a tuple like (2, 8, 2)"
      ) from None
    return text  # an unset (None) or other setting: the text as typed
  if isinstance(current, (list, tuple)):
    if not isinstance(value, (list, tuple)):
      value = (value,)
    return type(current)(value)
  return value


def apply(config: Any, overrides: Sequence[Override]) -> list[str]:
  """Applies ``overrides`` to ``config`` in order.

  Returns:
    Tokens that turned out not to be values (after a boolean override);
    they are positional arguments.

  Raises:
    ConfigOverrideError: an unknown key or a bad value (one line).
  """
  positional = []
  for override in overrides:
    parent, key, current = resolve(config, override.path)
    text = override.value
    if override.negated or (text is None and isinstance(current, bool)):
      if not isinstance(current, bool):
        raise ConfigOverrideError(
          f"--noconfig.{override.path}: config key {override.path} is "
          f"not a boolean; use --config.{override.path}=VALUE."
        )
      if override.next_token is not None:
        positional.append(override.next_token)
      text = "false" if override.negated else "true"
    elif text is None:
      if override.next_token is None:
        raise ConfigOverrideError(
          f"--config.{override.path} needs a value: "
          f"--config.{override.path}=VALUE."
        )
      text = override.next_token
    value = parse_value(text, current, override.path)
    if isinstance(parent, tuple):
      raise ConfigOverrideError(
        f"config key {override.path} is inside a tuple; set the whole "
        f"tuple instead."
      )
    try:
      parent[key] = value
    except (TypeError, KeyError, AttributeError) as e:
      raise ConfigOverrideError(
        f"cannot set config key {override.path} to {text!r}: "
        f"{str(e).splitlines()[0]}"
      ) from None
  return positional


def _one_line(error: BaseException, config_file: str | None) -> str:
  """The last line of an error (config files raise with a traceback)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[-1] if lines else type(error).__name__
  if not isinstance(error, flags.Error):
    text = f"{type(error).__name__}: {text}"
    frames = [
      f
      for f in traceback.extract_tb(error.__traceback__)
      if config_file
      and os.path.abspath(f.filename) == os.path.abspath(config_file)
    ]
    if frames:
      text += f" ({config_file}, line {frames[-1].lineno})"
  return text


def _flag_text(argv: Sequence[str], name: str) -> str | None:
  """The last ``--name=VALUE`` / ``--name VALUE`` in ``argv`` (or None)."""
  found = None
  for index, token in enumerate(argv):
    if token == "--":
      break
    for spelling in (f"--{name}", f"-{name}"):
      if token.startswith(spelling + "="):
        found = token[len(spelling) + 1 :]
      elif token == spelling and index + 1 < len(argv):
        found = argv[index + 1]
  return found


def fail(prog: str, message: str) -> None:
  """Prints ``<prog>: error: <message>`` (one line) and exits with 2."""
  print(
    f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True
  )
  sys.exit(2)


def make_flags_parser(
  prog: str, name: str = "config"
) -> Callable[[list[str]], list[str]]:
  """An ``absl.app.run`` ``flags_parser`` for a ``DEFINE_config_file`` flag.

  Args:
    prog: the program name for error lines (``train.py``).
    name: the config flag's name.

  Returns:
    ``parse(argv) -> argv`` (the positional arguments, ``argv[0]`` first);
    the config flag's value holds the overridden, still locked config.
  """

  def parse(argv: list[str]) -> list[str]:
    rest, overrides = split_overrides(argv, name)
    config_arg = _flag_text(rest, name)
    config_file = config_arg.split(":", 1)[0] if config_arg else None
    # config_flags reads its overrides from sys.argv when the config file
    # flag is parsed: show it the command line without them.
    saved_argv, sys.argv = sys.argv, rest
    try:
      positional = flags.FLAGS(rest)
      config = flags.FLAGS[name].value
      if config is not None:
        config.keys()  # a file that failed to load raises here
    except flags.Error as e:
      message = _one_line(e, config_file)
      if "must have a value other than None" in message:
        flag = message.split("--", 1)[-1].split("=", 1)[0]
        message = f"--{flag} is required (see --help)."
      elif "Unknown command line flag" in message:
        message += " (see --helpfull)"
      elif str(e).startswith(f"flag --{name}="):
        message = f"--{name}={config_arg}: {message}"
      fail(prog, message)
    except Exception as e:  # pylint: disable=broad-except
      # A config file that does not load: name it and the error.
      if config_file and not os.path.isfile(config_file):
        fail(prog, f"--{name}: no such config file {config_file!r}.")
      if isinstance(e, AttributeError) and "get_config" in str(e):
        fail(
          prog,
          f"--{name}={config_arg}: {config_file} defines no "
          "get_config(); point --config at a file in configs/.",
        )
      fail(prog, f"--{name}={config_arg}: {_one_line(e, config_file)}")
    finally:
      sys.argv = saved_argv
    if overrides and config is None:
      fail(prog, f"--{name}.* overrides need --{name}=FILE.")
    try:
      positional += apply(config, overrides)
    except ConfigOverrideError as e:
      fail(prog, str(e))
    return positional

  return parse
