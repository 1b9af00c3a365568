"""``kb eval``: quality report of retrieval and answers on a question set, with baselines and A/B."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from kb_chatbot.core.errors import KBError

log = logging.getLogger(__name__)


class _RunByDefault(click.Group):
    """``kb eval QUESTIONS ...`` runs an evaluation; ``kb eval label ...`` is a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("eval", cls=_RunByDefault, epilog="""\b
Examples:
  kb eval QUESTIONS --corpus-name NAME [...]     # an evaluation (see `kb eval run --help`)
  kb eval label REPORT_DIR                        # label its answers by hand
""")
def eval_cmd() -> None:
    """Evaluate answers and retrieval on a question set; label answers by hand."""


def judge_options(f):
    """--judge-url/--judge-model/--judge-key-env: a second opinion from an OpenAI-compatible model."""
    f = click.option("--judge-key-env", default=None, metavar="VAR",
                     help="Environment variable holding the judge endpoint's API key (local servers need none).")(f)
    f = click.option("--judge-model", default=None, help="Model name the judge endpoint serves.")(f)
    f = click.option("--judge-url", default=None, metavar="URL",
                     help="OpenAI-compatible endpoint (http://127.0.0.1:8000/v1) whose model gives a second "
                          "verdict on every answer; the report says how often it agrees.")(f)
    return f


def _judge(result: dict, url: str | None, model: str | None, key_env: str | None, progress: bool) -> None:
    if not url:
        return
    from kb_chatbot.eval.judge import Judge, JudgeError, apply_judge

    try:
        judge = Judge.from_options(url, model, key_env)
    except JudgeError as e:
        raise click.UsageError(str(e)) from None
    n = apply_judge(result, judge, progress=progress)
    click.secho(f"judge {judge.name} at {url} gave {n} verdicts", err=True)


@eval_cmd.command(
    "run",
    epilog="""\b
Examples:
  # ARAGOG: 107 questions on 14 arXiv PDFs (an ad-hoc drive corpus), baselines side by side;
  # retrieval runs on every question, the language model answers 12 of them
  kb eval ../shared/eval/aragog --corpus-name aragog \\
      --corpus-path ../shared/eval/aragog/datasets/ARAGOG/papers_for_questions --baselines --limit 12
  # retrieval only (no language model): seconds
  kb eval ../shared/eval/aragog --corpus-name aragog --corpus-path ... --baselines --retrieval-only
  # the sample company's 40 facts over its three sources, config A vs config B
  kb eval data/sample/facts.jsonl --corpus-name acme-wiki,acme-slack,acme-drive \
      --config kb.yaml --compare-config kb-bm25.yaml --limit 10

\b
Question files: JSONL, one object per line:
  {"question": "...", "expected_answer": "...", "expected_sources": [{"file": "hr/pto.md", "page": null}],
   "keywords": ["25 days"], "answerable": true}
  (also "answer", "source_path" + "page", and citations like [Handbook.pdf#page=7] inside the
  expected answer); or ARAGOG's JSON (or its folder). Output: results.json, report.md,
  calibration.jsonl and PNG plots in --out (default <data_dir>/reports/eval-<corpus>-<time>).
""",
)
@click.argument("questions", type=click.Path(exists=True, path_type=Path))
@click.option("--corpus-name", required=True,
              help="Source name(s) from the config, comma-separated, or the name for --corpus-path.")
@click.option("--corpus-path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of documents indexed as an ad-hoc drive source named --corpus-name.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "aragog", "squad"]), default="auto", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Questions the language model answers (spread over the expected files). Retrieval runs on all.")
@click.option("--config", "config_a", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Settings for config A (default: kb's --config / KB_CONFIG / ./kb.yaml).")
@click.option("--compare-config", "config_b", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Settings for config B: A/B report with per-question deltas.")
@click.option("--baselines", is_flag=True,
              help="Also BM25-only, dense-only, hybrid and hybrid+filter retrieval; answers with the context "
                   "filter and self-correction each flipped.")
@click.option("--retrieval-only", is_flag=True, help="No language model: retrieval metrics only.")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where corpora are indexed for evaluation (default <data_dir>/eval).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Human verdicts (JSONL from `kb eval label`) that override the automatic ones.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@judge_options
@click.pass_context
def eval_run(ctx: click.Context, questions: Path, corpus_name: str, corpus_path: Path | None, fmt: str,
             limit: int | None, config_a: Path | None, config_b: Path | None, baselines: bool,
             retrieval_only: bool, eval_dir: Path | None, out_dir: Path | None, labels_path: Path | None,
             quiet: bool, judge_url: str | None, judge_model: str | None, judge_key_env: str | None) -> None:
    """Evaluate retrieval and answers on QUESTIONS against the corpus --corpus-name."""
    from datetime import datetime

    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.eval.questions import load_questions
    from kb_chatbot.eval.report import markdown, write_report
    from kb_chatbot.eval.runner import EvalOptions, run_evaluation
    from kb_chatbot.app.kb.settings import get_settings

    if logging.getLogger().level > logging.DEBUG:  # per-answer INFO lines would bury the progress bars
        for name in ("kb_chatbot.app.answer.service", "kb_chatbot.app.answer.context_filter", "kb_chatbot.ingest.sync", "kb_chatbot.index"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if config_a is not None:
        settings_a, path_a = load_settings(config_a), str(config_a)
    else:
        settings_a, path_a = get_settings(ctx), (ctx.find_root().obj or {}).get("config")
    configs = [(path_a, settings_a)]
    if config_b is not None:
        configs.append((str(config_b), load_settings(config_b)))
    if corpus_path is not None:
        corpus_dir = corpus_path
    else:  # ARAGOG answerability is judged against the (first) configured source's folder
        corpus_dir = settings_a.source(corpus_name.split(",")[0].strip()).path
    qs = load_questions(questions, fmt, corpus_dir=corpus_dir)  # type: ignore[arg-type]
    click.secho(f"{len(qs)} questions ({sum(q.answerable for q in qs)} answerable) from {questions}", err=True)
    opts = EvalOptions(corpus_name=corpus_name, corpus_path=corpus_path, eval_dir=eval_dir, limit=limit,
                       baselines=baselines, retrieval_only=retrieval_only, progress=not quiet)
    if out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = settings_a.reports_dir / f"eval-{corpus_name.replace(',', '+')}-{stamp}"

    def save_partial(partial: dict) -> None:  # an interrupted run keeps what it measured
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.partial.json").write_text(json.dumps(partial, indent=1, default=str), encoding="utf-8")

    result = run_evaluation(qs, configs, opts, on_partial=save_partial)
    if labels_path is not None:
        from kb_chatbot.eval.labels import apply_labels, load_labels

        n = apply_labels(result, load_labels(labels_path))
        click.secho(f"{n} answers carry a human verdict from {labels_path}", err=True)
    _judge(result, judge_url, judge_model, judge_key_env, progress=not quiet)
    written = write_report(result, out_dir)
    (out_dir / "results.partial.json").unlink(missing_ok=True)
    click.echo(markdown(result))
    click.secho("\nwrote " + ", ".join(str(p) for p in written.values()), fg="green", err=True)


@eval_cmd.command("suite", epilog="""\b
Examples:
  # the third-party sets and their typo copies, 30/20/30 answers each (eval/suites/third-party.yaml)
  kb eval suite eval/suites/third-party.yaml --typos --labels eval/devsets/labels.jsonl
""")
@click.argument("suite_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--typos/--no-typos", default=True, show_default=True, help="Also run a typo-perturbed copy of each set.")
@click.option("--seed", default=7, show_default=True, help="Seed of the question sample and the typos.")
@click.option("--answers", type=click.IntRange(min=1), default=None, help="Answers per set (overrides the suite file).")
@click.option("--only", default=None,
              help="Comma-separated set names to run (default: all); 'aragog~typo' runs only that typo copy.")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Human verdicts (JSONL from `kb eval label`) that override the automatic ones.")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where corpora are indexed for evaluation (default <data_dir>/eval of each set's config).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def eval_suite(ctx: click.Context, suite_file: Path, typos: bool, seed: int, answers: int | None, only: str | None,
               labels_path: Path | None, eval_dir: Path | None, out_dir: Path | None, quiet: bool) -> None:
    """Run every set of SUITE_FILE (and a typo copy of each): one table of answered right,
    shown-and-wrong, false abstention, unanswerable declined, page citations and ECE per set,
    and a plot."""
    from dataclasses import replace
    from datetime import datetime

    from kb_chatbot.eval import suite as S

    for name in ("kb_chatbot.app.answer.service", "kb_chatbot.app.answer.context_filter", "kb_chatbot.ingest.sync",
                 "kb_chatbot.index"):
        logging.getLogger(name).setLevel(logging.WARNING)
    specs = S.load_suite(suite_file)
    variants = None
    if only:
        wanted = {n.strip() for n in only.split(",")}
        unknown = {n.removesuffix("~typo") for n in wanted} - {s.name for s in specs}
        if unknown:
            raise click.UsageError(f"--only names no set of {suite_file}: {', '.join(sorted(unknown))}")
        if any(n.endswith("~typo") for n in wanted) and not typos:
            raise click.UsageError("--only names a typo copy: drop --no-typos")
        variants = {v for n in wanted for v in ((n,) if n.endswith("~typo") else (n, f"{n}~typo"))}
        specs = [s for s in specs if s.name in {n.removesuffix("~typo") for n in wanted}]
    if answers:
        specs = [replace(s, answers=answers) for s in specs]
    out_dir = out_dir or Path("data/runtime/reports") / f"suite-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    def partial(label: str, so_far: dict) -> None:
        S.write(so_far, out_dir)
        click.secho(f"{label} done: " + ", ".join(f"{lab} {so_far['sets'][label].get(k)}" for k, lab, _ in S.FIGURES[:3]),
                    err=True)

    result = S.run_suite(specs, typos=typos, seed=seed, default_config=(ctx.find_root().obj or {}).get("config"),
                         eval_dir=eval_dir, labels=labels_path, progress=not quiet, on_set=partial,
                         variants=variants)
    written = S.write(result, out_dir)
    click.echo(S.markdown(result))
    click.secho("\nwrote " + ", ".join(str(p) for p in written.values()), fg="green", err=True)


@eval_cmd.command("compare", epilog="""\b
Examples:
  # what a change did: figures per set before -> after, then every answer that changed
  kb eval compare data/runtime/reports/suite-before data/runtime/reports/suite-after \\
      --labels eval/devsets/labels.jsonl
  # a run split over two processes (--only): its folders joined by a comma
  kb eval compare runs/base-a,runs/base-b runs/after-a,runs/after-b --out compare.md
""")
@click.argument("before")
@click.argument("after")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Human verdicts (JSONL from `kb eval label`) applied to both runs.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison here (markdown; JSON and a PNG plot beside it).")
def eval_compare(before: str, after: str, labels_path: Path | None, out_file: Path | None) -> None:
    """Compare two `kb eval suite` runs (folders; comma-separated when a run was split with
    --only): each set's figures before -> after, worse ones marked, and every question whose
    answer changed, both answers side by side, so a change is judged by reading them."""
    from kb_chatbot.eval import suite as S
    from kb_chatbot.eval.labels import load_labels

    try:
        cmp = S.compare(S.load_run(before), S.load_run(after), load_labels(labels_path) if labels_path else None)
    except KBError as e:
        raise click.ClickException(str(e)) from None
    text = S.compare_markdown(cmp)
    click.echo(text)
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text + "\n", encoding="utf-8")
        out_file.with_suffix(".json").write_text(json.dumps(cmp, indent=1, default=str), encoding="utf-8")
        S.compare_plot(cmp, out_file.with_suffix(".png"))
        click.secho(f"wrote {out_file} (and .json, .png beside it)", fg="green", err=True)


@eval_cmd.command("spelling", epilog="""\b
Examples:
  # every question of each set, a typo copy per seed, corrected against the set's own index
  kb eval spelling eval/suites/third-party.yaml --seeds 7,99
""")
@click.argument("suite_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default="7,99", show_default=True, help="Comma-separated seeds: one typo copy each.")
@click.option("--only", default=None, help="Comma-separated set names to run (default: all).")
@click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where corpora are indexed for evaluation (default <data_dir>/eval of each set's config).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures, with every wrong fix, as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def eval_spelling(ctx: click.Context, suite_file: Path, seeds: str, only: str | None, eval_dir: Path | None,
                  out_file: Path | None, quiet: bool) -> None:
    """How well the speller undoes typos on every set of SUITE_FILE, no language model needed:
    words restored as written, wrong fixes, the set's own misspellings fixed, clean questions changed."""
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.eval import suite as S
    from kb_chatbot.eval.runner import corpus_settings, ensure_indexed, eval_principal
    from kb_chatbot.eval.spelling import spelling_figures
    from kb_chatbot.index.generation import open_index

    for name in ("kb_chatbot.app.answer.spelling", "kb_chatbot.ingest.sync", "kb_chatbot.index"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: comma-separated whole numbers", param_hint="--seeds") from None
    specs = S.load_suite(suite_file)
    if only:
        specs = [s for s in specs if s.name in {n.strip() for n in only.split(",")}]
    rows = {}
    for spec in specs:
        settings, corpus_path, questions = S.open_set(spec, (ctx.find_root().obj or {}).get("config"), eval_dir)
        cs = corpus_settings(settings, spec.corpus_name, corpus_path, eval_dir)
        ensure_indexed(cs, progress=not quiet)
        index = open_index(cs)
        me = eval_principal(index).principals()
        speller = build_services(cs, index=index).speller
        fig = spelling_figures(questions, lambda text: speller.correct(text, me).text, seed_list)
        rows[spec.name] = fig.to_dict()
        click.secho(f"{spec.name}: restored {rows[spec.name]['restored_share']}", err=True)
    click.echo("| set | questions | typo'd words | restored as written | wrong fixes | own misspellings fixed "
               "| clean questions changed |")
    click.echo("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        click.echo(f"| {name} | {r['questions']} | {r['typo_words']} | {r['restored_share']} | {r['wrong_fixes']} | "
                   f"{r['own_fixes']} | {r['clean_changed']} |")
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps({"seeds": seed_list, "sets": rows}, indent=1), encoding="utf-8")
        click.secho(f"wrote {out_file}", fg="green", err=True)


@eval_cmd.command("label", epilog="""\b
Examples:
  kb eval label data/runtime/reports/eval-handbook-20261130-101500
  kb eval label results.json --labels eval/devsets/labels.jsonl --all
""")
@click.argument("report", type=click.Path(exists=True, path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The labels file to append to (default: labels.jsonl beside the report).")
@click.option("--all", "relabel", is_flag=True, help="Also show answers that already have a label.")
def eval_label(report: Path, labels_path: Path | None, relabel: bool) -> None:
    """Label the answers of REPORT (a report folder or its results.json) as correct, wrong,
    vacuous or abstained; then re-apply the labels and print how often the automatic verdict agrees."""
    from kb_chatbot.eval.labels import apply_labels, label_records, load_labels
    from kb_chatbot.eval.report import write_report

    results = report / "results.json" if report.is_dir() else report
    try:
        result = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise click.ClickException(f"{results}: not an eval results file ({e})") from None
    labels_path = labels_path or results.parent / "labels.jsonl"
    records = [r for run in result.get("answers", {}).values() for r in run["records"]]
    if not records:
        raise click.ClickException(f"{results}: no answers to label (was it a --retrieval-only run?)")
    n = label_records(records, labels_path, ask=lambda p: click.prompt(p, default="s", show_default=False),
                      show=click.echo, only_unlabelled=not relabel)
    applied = apply_labels(result, load_labels(labels_path))
    write_report(result, results.parent)
    for name, run in result["answers"].items():
        s = run["summary"]
        click.echo(f"{name}: {s['human_labelled']} labelled; the automatic verdict agrees on "
                   f"{s['human_agreement'] if s['human_agreement'] is not None else '-'}; "
                   f"shown-and-wrong {s['shown_and_wrong']}")
    click.secho(f"labelled {n} now, {applied} in all; labels in {labels_path}", fg="green", err=True)


@eval_cmd.command("rejudge", epilog="""\b
Examples:
  kb eval rejudge data/runtime/reports/eval-handbook-20261130-101500
""")
@click.argument("report", type=click.Path(exists=True, path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Human verdicts to apply afterwards.")
@judge_options
def eval_rejudge(report: Path, labels_path: Path | None, judge_url: str | None, judge_model: str | None,
                 judge_key_env: str | None) -> None:
    """Recompute the verdicts of REPORT (a report folder or its results.json) with today's rules
    and rewrite its report: for results written before the rules changed."""
    from kb_chatbot.eval.labels import apply_labels, load_labels, rejudge
    from kb_chatbot.eval.report import markdown, write_report

    results = report / "results.json" if report.is_dir() else report
    try:
        result = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise click.ClickException(f"{results}: not an eval results file ({e})") from None
    n = rejudge(result)
    if labels_path is not None:
        apply_labels(result, load_labels(labels_path))
    _judge(result, judge_url, judge_model, judge_key_env, progress=False)
    result["meta"].setdefault("sim_correct", 0.7)
    written = write_report(result, results.parent)
    click.echo(markdown(result))
    click.secho(f"rejudged {n} answers; wrote " + ", ".join(str(p) for p in written.values()), fg="green", err=True)
