"""What the service-driving commands share (loadtests.soak, loadtests.rollout): their common
options, the service they start (the model and the settings given), the files they send, and the
end of a run (report files written, verdicts printed, exit status 1 when one was missed)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from service import settings
from service.settings import SettingsError

from . import images
from .servers import serve_env

VERDICTS = {True: "met", False: "MISSED", None: "reported"}


class CommandError(Exception):
    """A user mistake or an unusable setup; the message is one line."""


def given_settings(option: str, items: list[str]) -> dict[str, str]:
    """SERVICE_X=VALUE items (--set's, --compare's) as a dict; "defaults" or "" add nothing."""
    given = {}
    for item in (item.strip() for item in items):
        if item in ("", "defaults"):
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in settings.VARIABLES:
            raise CommandError(f"{option} {item!r}: expected SERVICE_X=VALUE with one of {', '.join(settings.VARIABLES)}")
        if key in ("SERVICE_MODELS", "SERVICE_DEFAULT_MODEL"):
            raise CommandError(f"{option} {key}: the benchmark serves --model alone")
        given[key] = value
    return given


def parser(prog: str, doc: str, set_help: str = "a service setting (repeatable)") -> argparse.ArgumentParser:
    """A parser with the module docstring as its help and --model, --images, --limit, --set."""
    made = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(doc.split("\n")[2:]))
    default_model = settings.VARIABLES["SERVICE_DEFAULT_MODEL"][0]
    made.add_argument("--model", default=default_model,
                      help=f"model in the BentoML store, NAME or NAME:VERSION (default: {default_model}, the service's default)")
    made.add_argument("--images", type=Path, help="folder of image files, searched recursively (default: 32 generated JPEGs, offline)")
    made.add_argument("--limit", type=int, default=64, help="use at most this many files, spread over the folder (default: 64)")
    made.add_argument("--set", action="append", default=[], metavar="SERVICE_X=VALUE", help=set_help)
    return made


@dataclass(frozen=True)
class Setup:
    given: dict[str, str]  # the settings given (defaults first, then --set)
    model: settings.ModelRef
    config: settings.Settings
    env: dict[str, str]  # the servers' environment
    files: list[tuple[str, bytes]]


def setup(args: argparse.Namespace, defaults: dict[str, str] | None = None) -> Setup:
    """The service of --model with `defaults` and --set's settings, and the files of --images."""
    try:
        given = {**(defaults or {}), **given_settings("--set", args.set)}
        config = settings.load({**given, "SERVICE_MODELS": args.model})
    except SettingsError as err:
        raise CommandError(f"--set/--model: {err}") from None
    model = config.models[0]
    if args.images is None:
        files = images.generated_jpegs(min(args.limit, 32))
    else:
        try:
            files = images.read_files(images.image_files(args.images, args.limit))
        except images.ImagesError as err:
            raise CommandError(f"--images: {err}") from None
    env = serve_env(**given, SERVICE_MODELS=args.model, SERVICE_DEFAULT_MODEL=model.name)
    return Setup(given, model, config, env, files)


def finish(results: dict, out: Path, name: str, plot: Callable[[dict, Path], Path], markdown: Callable[[dict], str]) -> None:
    """NAME.json, NAME.png and NAME.md in `out`; each verdict printed; exit status 1 if one was missed."""
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / f"{name}.png")
    (out / f"{name}.md").write_text(markdown(results))
    for row in results["verdicts"]:
        print(f"{VERDICTS[row['met']]:10s} {row['target']}: {row['measured']}")
    print(f"wrote {out / f'{name}.md'}")
    if any(row["met"] is False for row in results["verdicts"]):
        raise SystemExit(1)
