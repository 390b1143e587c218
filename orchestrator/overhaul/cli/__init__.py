"""`overhaul`: az-shaped commands over the orchestrator's REST API (and `overhaul serve`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from overhaul import __version__
from overhaul.cli.az_login import add_az_login_command, run_az_login
from overhaul.cli.client import EXIT_USAGE, Client, CliError, default_endpoint, find_token
from overhaul.cli.events import add_event_commands, run_events
from overhaul.cli.gallery import add_gallery_commands, run_sig, run_vm_image, sig_defaults
from overhaul.cli.groups import add_group_commands, run_group
from overhaul.cli.hosts import add_host_commands, run_hosts
from overhaul.cli.maintenance import add_maintenance_commands, run_maintenance
from overhaul.cli.network import add_network_commands, run_network
from overhaul.cli.vmss import add_vmss_commands, run_vmss
from overhaul.defaults import DEFAULT_PORT


def config_path() -> Path:
    """Where `overhaul configure --defaults` keeps them: $OVERHAUL_CONFIG_DIR, else ~/.config/overhaul."""
    base = os.environ.get("OVERHAUL_CONFIG_DIR") or str(Path.home() / ".config" / "overhaul")
    return Path(base) / "config.json"


def load_defaults() -> dict[str, str]:
    try:
        doc = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    defaults = doc.get("defaults") if isinstance(doc, dict) else None
    return {k: v for k, v in defaults.items() if isinstance(v, str)} if isinstance(defaults, dict) else {}


def configure(args: argparse.Namespace) -> int:
    """az configure --defaults group=NAME subscription=ID location=LOC: kept for later commands."""
    defaults = load_defaults()
    for item in args.defaults or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("group", "subscription", "location"):
            raise CliError(f"--defaults {item!r}: expected group=NAME, subscription=ID or location=LOC")
        if value:
            defaults[key] = value
        else:
            defaults.pop(key, None)  # az: an empty value clears the default
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"defaults": defaults}, indent=2) + "\n")
    print(json.dumps(defaults, indent=2))
    return 0


def common_arguments() -> argparse.ArgumentParser:
    """The flags every command takes (az's global arguments)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=default_endpoint(),
        help="the orchestrator's URL (env OVERHAUL_ENDPOINT; default: where the state directory's serve listens, "
        f"else http://127.0.0.1:{DEFAULT_PORT})",
    )
    common.add_argument(
        "--token-file",
        help="file holding the API token (default: STATE_DIR/token, STATE_DIR from OVERHAUL_STATE_DIR; "
        "or the token itself in OVERHAUL_TOKEN)",
    )
    common.add_argument("--subscription", help="default: `overhaul configure --defaults subscription=…`, else local")
    common.add_argument("--debug", action="store_true", help="print every request and answer to stderr")
    common.add_argument("--verbose", action="store_true", help="print each request, its status and duration to stderr")
    common.add_argument(
        "-o", "--output", choices=["json", "jsonc", "table", "tsv", "yaml", "yamlc", "none"], default="json"
    )
    common.add_argument("--query", help="JMESPath query applied to the result, as az's --query")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul",
        description="Health-gated automatic OS image upgrades for scale sets of local containers (az-shaped).",
        epilog="Start the service with `overhaul serve`; the other commands talk to it. "
        "Example: overhaul vmss rolling-upgrade start --name web --resource-group demo --wait",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = common_arguments()
    groups = parser.add_subparsers(dest="group", required=True)

    configure_parser = groups.add_parser("configure", help="defaults for later commands, as `az configure`")
    configure_parser.add_argument(
        "--defaults", nargs="*", metavar="KEY=VALUE", help="group=NAME subscription=ID location=LOC (empty clears)"
    )
    shell_help = "print a shell completion script: source <(overhaul completion bash)"
    groups.add_parser("completion", help=shell_help).add_argument("shell", choices=["bash"])
    # `overhaul serve ...` is handed to the server's own parser before this one runs (see main): the client
    # commands never import the server. Listed here so that `overhaul --help` shows it.
    groups.add_parser("serve", help="run the orchestrator service (overhaul serve --help lists its settings)")

    add_az_login_command(groups)
    add_group_commands(groups, common)
    add_vmss_commands(groups, common)
    add_host_commands(add_gallery_commands(groups, common), common)
    add_network_commands(groups, common)
    add_maintenance_commands(groups, common)
    add_event_commands(groups, common)
    return parser


def completion_words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command path ("overhaul", "overhaul vmss rolling-upgrade", ...) -> the words that may follow it."""
    table: dict[str, list[str]] = {}

    def walk(node: argparse.ArgumentParser, path: list[str]) -> None:
        words: set[str] = set()
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.add(name)
                    walk(sub, [*path, name])
            elif action.option_strings:
                words.update(o for o in action.option_strings if o.startswith("--"))
            elif action.choices:
                words.update(str(c) for c in action.choices)
        table[" ".join(path)] = sorted(words)

    walk(parser, ["overhaul"])
    return table


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for every command and flag: `source <(overhaul completion bash)`."""
    entries = "\n".join(f'    ["{path}"]="{" ".join(words)}"' for path, words in completion_words(parser).items())
    return f"""# bash completion for overhaul: source <(overhaul completion bash)
declare -gA _overhaul_words=(
{entries}
)
_overhaul() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="overhaul" word next
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        next="$path $word"
        [[ $word != -* && -n "${{_overhaul_words[$next]+x}}" ]] && path="$next"
    done
    COMPREPLY=($(compgen -W "${{_overhaul_words[$path]}}" -- "$cur"))
}}
complete -F _overhaul overhaul
"""


def image_list(args: argparse.Namespace) -> bool:
    """`vm image list`: the one command that names no resource group (a platform image is in none)."""
    return bool(args.group == "vm" and args.vm_group == "image")


def apply_defaults(args: argparse.Namespace, defaults: dict[str, str]) -> None:
    """What the command leaves out comes from `overhaul configure --defaults`, as az's defaults."""
    if getattr(args, "resource_group", None) in (None, "") and "group" in defaults and not image_list(args):
        args.resource_group = defaults["group"]
    if getattr(args, "subscription", None) is None:
        args.subscription = defaults.get("subscription", "local")
    listing = getattr(args, "sig_command", None) == "list" or getattr(args, "lb_command", None) == "list"
    if args.group in ("sig", "network") and not args.resource_group and not listing and not getattr(args, "ids", None):
        raise CliError("--resource-group/-g is required (or `overhaul configure --defaults group=NAME`)", EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        server = importlib.import_module("overhaul.serve")
        return int(server.main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.group == "configure":
            return configure(args)
        if args.group == "completion":
            print(bash_completion(parser), end="")
            return 0
        if args.group == "az-login":
            return run_az_login(args)
        apply_defaults(args, load_defaults())
        client = Client(args.endpoint, find_token(args), args.subscription, debug=args.debug, verbose=args.verbose)
        if args.group == "group":
            return run_group(client, args)
        if args.group == "vmss":
            return run_vmss(client, args)
        if args.group == "sig":
            return run_sig(client, sig_defaults(args))
        if args.group == "network":
            return run_network(client, args)
        if args.group == "maintenance":
            return run_maintenance(client, args)
        if args.group == "eventgrid":
            return run_events(client, args)
        return run_vm_image(client, args) if image_list(args) else run_hosts(client, args)
    except CliError as exc:
        print(f"overhaul: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Only the CLI stops: what it was following goes on in `overhaul serve`.
        print(
            "overhaul: interrupted; a rolling upgrade that was started goes on "
            "(overhaul vmss rolling-upgrade get-latest --wait … follows it again)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
