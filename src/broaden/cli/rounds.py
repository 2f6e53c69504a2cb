"""``broaden init``, ``broaden round start|import|finish`` and ``broaden status``: annotation rounds."""
from __future__ import annotations

import argparse
import json
import sys

from broaden.cli.common import add_engine_flags, engine_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create an annotation workspace (config + SQLite ledger)",
                       description="Create WORKSPACE with its config and ledger. Settings come from --config "
                       "(YAML/JSON, see docs/rounds.md) and the flags below, which override it.")
    p.add_argument("workspace", help="folder to create (must not exist or be empty)")
    p.add_argument("--config", help="YAML/JSON file with the workspace settings")
    p.add_argument("--classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   dest="class_names", metavar="NAME,NAME,...", help="class names, in label order")
    p.add_argument("--pool", help="default pool (scored Parquet file or folder)")
    p.add_argument("--labeled", help="initial labelled scored table (id, label, embedding[, probs])")
    p.add_argument("--eval", help="fixed evaluation set (id, label, embedding)")
    p.add_argument("--model", help="saved classifier folder used to score pools that have no probs")
    p.add_argument("--strategy", help="strategy or mix, e.g. entropy:0.8,lsb-lt:0.2")
    p.add_argument("--budget", type=int, help="items per round")
    p.set_defaults(func=run_init)

    rp = sub.add_parser("round", help="start, import labels into, or finish an annotation round")
    rsub = rp.add_subparsers(dest="round_command", metavar="ACTION", required=True)
    s = rsub.add_parser("start", help="select a batch from the pool and write it for annotators",
                        description="Score the pool if needed, select the batch, record it in the ledger in one "
                        "transaction, and write CSV, JSONL and Label Studio tasks under the round's export/.")
    s.add_argument("workspace")
    s.add_argument("--pool", help="pool for this round (default: the config's pool)")
    s.add_argument("--budget", type=int, help="override the config's budget")
    s.add_argument("--strategy", help="override the config's strategy mix")
    s.add_argument("--seed", type=int, help="override the config's seed")
    _add_label_studio(s, "--to", "then upload the tasks to a Label Studio project (also done when the config "
                      "has label_studio.url)")
    add_engine_flags(s)
    s.set_defaults(func=run_start)

    ps = rsub.add_parser("push", help="upload an open round's tasks to Label Studio (again)",
                         description="Upload the tasks of an open round, with the model's predictions and "
                         "broaden's provenance, to a Label Studio project (found by id or title, created if "
                         "missing). Tasks already in the project are skipped, so a push cut short is just run "
                         f"again. The token is read from ${TOKEN_ENV}.")
    ps.add_argument("workspace")
    _add_label_studio(ps, "--to", "Label Studio server (default: the config's label_studio.url)")
    ps.add_argument("--round", type=int, help="round to push (default: the latest open one)")
    ps.set_defaults(func=run_push)

    i = rsub.add_parser("import", help="import labels (CSV, JSONL, JSON or a Label Studio export)",
                        description="Validate and store labels. Re-importing a file changes nothing. Bad rows "
                        "are counted by kind (the first 20 shown) and skipped, or with --strict nothing is "
                        "imported. A file with no valid label imports nothing and exits with status 2.")
    i.add_argument("workspace")
    i.add_argument("file", nargs="?", help="annotation file (or use --from label-studio URL)")
    _add_label_studio(i, "--from", "pull the annotations from a Label Studio project through its API instead of "
                      "a file")
    i.add_argument("--strict", action="store_true", help="import nothing if any row is bad")
    i.add_argument("--format", default="auto", choices=("auto", "csv", "jsonl", "json", "label-studio"))
    i.add_argument("--annotator", help="annotator name for rows that do not name one "
                   "(default: one annotator per file)")
    i.set_defaults(func=run_import)

    f = rsub.add_parser("finish", help="retrain on all labels, evaluate, close the round")
    f.add_argument("workspace")
    f.add_argument("--round", type=int, help="round to finish (default: the latest open one)")
    f.add_argument("--allow-pending", action="store_true",
                   help="finish although some items have no label or a tied vote")
    f.set_defaults(func=run_finish)

    st = sub.add_parser("status", help="round table, metrics and per-strategy bad-case yield of a workspace")
    st.add_argument("workspace")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run_status)


TOKEN_ENV = "LABEL_STUDIO_API_KEY"


def _add_label_studio(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    p.add_argument(flag, nargs="+", metavar=("label-studio", "URL"), dest="label_studio",
                   help=f"{help}; the URL defaults to the config's label_studio.url; token from ${TOKEN_ENV}")
    p.add_argument("--project", help="Label Studio project id or title (default: where the round was pushed, the "
                   "config's label_studio.project, else 'broaden <workspace folder>')")


def _label_studio_url(args: argparse.Namespace, flag: str) -> tuple[bool, str | None]:
    """(whether the flag was given, the URL it names or None for the config's)."""
    from broaden.errors import ConfigError

    values = getattr(args, "label_studio", None)
    if not values:
        return False, None
    if values[0] != "label-studio" or len(values) > 2:
        raise ConfigError(f"{flag} expects 'label-studio' and optionally the server URL, e.g. "
                          f"{flag} label-studio http://localhost:8080; got {' '.join(values)}")
    return True, values[1] if len(values) == 2 else None


def _print_push(p) -> None:
    made = "created" if p.created else "existing"
    print(f"  label studio: round {p.round} → {p.url}/projects/{p.project_id} ({made} project {p.project_title!r}): "
          f"{p.uploaded} task(s) uploaded with {p.predictions} prediction(s), {p.already} already there "
          f"({p.seconds:.1f} s)")


def run_push(args: argparse.Namespace) -> int:
    from broaden.rounds import round_push

    _, url = _label_studio_url(args, "--to")
    _print_push(round_push(args.workspace, url=url, project=args.project, round=args.round))
    return 0


def run_init(args: argparse.Namespace) -> int:
    from broaden.rounds import init

    settings = {k: getattr(args, k) for k in ("class_names", "pool", "labeled", "eval", "model", "strategy", "budget")}
    ws = init(args.workspace, args.config, **settings)
    print(f"created workspace {ws.path} ({len(ws.config.class_names)} classes, strategy {ws.config.strategy}, "
          f"budget {ws.config.budget})")
    return 0


def run_start(args: argparse.Namespace) -> int:
    from broaden.rounds import round_start

    with engine_from_args(args) as engine:
        r = round_start(args.workspace, args.pool, budget=args.budget, strategy=args.strategy, seed=args.seed,
                        engine=engine)
    mix = ", ".join(f"{k} {v}" for k, v in r.by_strategy.items())
    print(f"round {r.round}: {r.selected} items selected ({mix}); pool scored by {r.model_id}, "
          f"embeddings {r.embedding_version}")
    if r.allocation:
        print("  auto: " + ", ".join(f"{a} {v:.2f}" for a, v in r.allocation["shares"].items()))
        for reason in r.allocation["reasons"]:
            print(f"    {reason}")
    if r.scored_pool:
        print(f"  scored pool: {r.scored_pool}")
    for kind, path in r.exports.items():
        print(f"  {kind}: {path}")
    given, url = _label_studio_url(args, "--to")
    from broaden.rounds import Workspace, round_push

    if given or (Workspace(args.workspace).config.label_studio or {}).get("url"):
        from broaden.errors import BroadenError

        try:
            _print_push(round_push(args.workspace, url=url, project=args.project, round=r.round))
        except BroadenError as exc:  # the round stands; say so, and how to finish the upload
            raise type(exc)(f"round {r.round} was started and its files written, but the Label Studio push "
                            f"failed: {exc}; push it with `broaden round push {args.workspace}`") from None
    return 0


def run_import(args: argparse.Namespace) -> int:
    from broaden.errors import ConfigError
    from broaden.rounds import Workspace, round_import, round_pull
    from broaden.rounds.annotate import summarise

    given, url = _label_studio_url(args, "--from")
    if args.file and given:
        raise ConfigError("give an annotation FILE or --from label-studio URL, not both")
    if not args.file and not given and not (Workspace(args.workspace).config.label_studio or {}).get("url"):
        raise ConfigError("give an annotation FILE, or --from label-studio URL to pull from Label Studio")
    if args.file:
        r = round_import(args.workspace, args.file, strict=args.strict, format=args.format, annotator=args.annotator)
    else:
        r = round_pull(args.workspace, url=url, project=args.project, strict=args.strict)
    if r.already_imported:
        print(f"{r.path}: already imported ({r.labels} labels); nothing changed")
        return 0
    print(f"{r.path} ({r.format}): {r.new} new label(s), {r.duplicates} already present, "
          f"{r.unlabelled} {'task' if not args.file else 'row'}(s) without a label, {len(r.bad)} bad row(s)")
    if r.late:
        rounds = ", ".join(map(str, sorted({x.round for x in r.late})))
        print(f"  {len(r.late)} late label(s) on items of finished round(s) {rounds}, not imported (reported once): "
              + "; ".join(f"{x.item_id!r} {x.annotator} → {x.label}" for x in r.late[:5])
              + (f"; … and {len(r.late) - 5} more" if len(r.late) > 5 else ""), file=sys.stderr)
    for line in summarise(r.bad) if r.bad else ():
        print(f"  {line}", file=sys.stderr)
    return 0


def run_finish(args: argparse.Namespace) -> int:
    from broaden.metrics import to_jsonable
    from broaden.rounds import round_finish

    r = round_finish(args.workspace, round=args.round, allow_pending=args.allow_pending)
    print(f"round {r.round} finished: trained {r.model_id} on {r.trained_on} labelled items"
          + (f" ({r.pending} pending, {r.tied} tied left out)" if r.pending or r.tied else ""))
    if r.metrics:
        from broaden.console import print_metrics_table

        print_metrics_table({f"round {r.round}": to_jsonable(r.metrics)})
    return 0


def run_status(args: argparse.Namespace) -> int:
    from broaden.rounds import status
    from broaden.rounds.overview import print_status

    report = status(args.workspace)
    if args.json:
        from broaden.metrics import to_jsonable

        print(json.dumps(to_jsonable(report), indent=2))
    else:
        print_status(report)
    return 0
