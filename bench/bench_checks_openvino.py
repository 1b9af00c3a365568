"""Do the yes/no checks give the same verdicts on OpenVINO as on llama.cpp? (issue 26's bake-off)

    .venv/bin/python bench/bench_backends.py --convert-python ...   # makes the OpenVINO folders first
    .venv/bin/python bench/bench_checks_openvino.py --questions 8

The answer service answers the first ``--questions`` answerable questions of the trust dev set
(``eval/devsets/handbook.jsonl`` over the handbook and Drive files in ../shared) with the
packaged Qwen2.5-Coder-1.5B on llama.cpp, as served; every yes/no check it asks on the way (the
support check of each sentence, and any other) is recorded with its exact prompt token ids and
llama.cpp's P(yes). Each OpenVINO model (int8 and int4, exported by ``bench_backends.py``) then
reads the same token ids through the OpenVINO runtime directly — OpenVINO GenAI's pipeline gives
no next-token probabilities — and P(yes) is computed the same way (the yes/no token ids of
``_yes_no_ids``, ``yes_share_from_logprobs``). Reported per model: how many verdicts
(P ≥ ``SUPPORT_MIN``) agree, the largest |ΔP|, and the seconds of one check read in full (no
prefix reuse here; llama.cpp reuses the answer prompt's cached prefix). Writes
bench/results/bench_checks_openvino.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, offline)
from common import write_results

MODELS = {"OpenVINO int8": "ov-int8", "OpenVINO int4": "ov-int4"}


def record_checks(n: int) -> tuple[list[dict], list[int], list[int]]:
    """(checks, yes ids, no ids): every yes/no check the service asks while answering ``n`` questions."""
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.eval.questions import load_questions
    from kb_chatbot.eval.runner import _Parts, corpus_settings, ensure_indexed, eval_principal
    from kb_chatbot.index.generation import open_index

    s = load_settings(common.REPO / "eval" / "devsets" / "shared.yaml")
    cs = corpus_settings(s, "handbook,drive")
    parts = _Parts()
    ensure_indexed(cs, embedder=parts.embedder(cs), progress=False)
    index = open_index(cs)
    gen = parts.generator(s)
    checks: list[dict] = []
    asked = gen.yes_probability

    def recording(messages):
        p = asked(messages)
        checks.append({"question": current[0], "tokens": gen._prompt_tokens(messages), "p_llamacpp": p})
        return p

    gen.yes_probability = recording  # the service's own checks, as they are asked
    svc = build_services(cs, embedder=parts.embedder(cs), index=index, generator=gen, answer_log=None).answer_service
    user = eval_principal(index)
    current = [""]
    for q in [q for q in load_questions(common.REPO / "eval" / "devsets" / "handbook.jsonl") if q.answerable][:n]:
        current[0] = q.id
        a = svc.answer(q.question, user=user)
        print(f"{q.id}: {a.route} {a.text[:90]!r} ({sum(c['question'] == q.id for c in checks)} checks)",
              file=sys.stderr, flush=True)
    yes, no = gen._yes_no_ids()
    return checks, yes, no


def openvino_p_yes(folder: str, checks: list[dict], yes: list[int], no: list[int], threads: int) -> list[dict]:
    import openvino as ov

    from kb_chatbot.app.generators.base import yes_share_from_logprobs
    from kb_chatbot.app.generators.openvino import step_inputs

    core = ov.Core()
    model = core.compile_model(f"{folder}/openvino_model.xml", "CPU", {"INFERENCE_NUM_THREADS": threads})
    req = model.create_infer_request()
    out = []
    for c in checks:
        req.reset_state()  # the whole prompt, every time
        t0 = time.perf_counter()
        req.infer(step_inputs(c["tokens"], 0))
        logits = req.get_tensor("logits").data[0, -1].astype(np.float64)
        seconds = time.perf_counter() - t0
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        share = yes_share_from_logprobs([float(logp[i]) for i in yes], [float(logp[i]) for i in no])
        out.append({"p": 0.5 if share is None else share, "seconds": round(seconds, 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(common.REPO / "data" / "runtime" / "bench-backends"),
                    help="where bench_backends.py put the converted models")
    args = ap.parse_args(argv)
    from kb_chatbot.app.answer.checks.support import SUPPORT_MIN

    checks, yes, no = record_checks(args.questions)
    summary = {}
    for name, sub in MODELS.items():
        got = openvino_p_yes(f"{args.work}/{sub}", checks, yes, no, args.threads)
        agree = sum((g["p"] >= SUPPORT_MIN) == (c["p_llamacpp"] >= SUPPORT_MIN) for g, c in zip(got, checks))
        summary[name] = {"checks": len(checks), "same_verdict": agree,
                         "max_abs_dp": round(max(abs(g["p"] - c["p_llamacpp"]) for g, c in zip(got, checks)), 4),
                         "median_abs_dp": round(statistics.median(abs(g["p"] - c["p_llamacpp"])
                                                                  for g, c in zip(got, checks)), 4),
                         "p50_check_read_s": round(statistics.median(g["seconds"] for g in got), 3)}
        for g, c in zip(got, checks):
            c[f"p_{sub}"] = round(g["p"], 4)
        print(f"{name}: {summary[name]}")
    write_results("bench_checks_openvino", {"support_min": SUPPORT_MIN, "summary": summary,
                                            "checks": [{k: v for k, v in c.items() if k != "tokens"} |
                                                       {"prompt_tokens": len(c["tokens"])} for c in checks]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
