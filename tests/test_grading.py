"""The grading pipeline end to end: nbgrader generate_assignment -> autograde -> feedback -> export.

Every submission is graded in a temporary course; the repository is only read.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moe_course.grading import grade_submissions, main, release, run_nbgrader, safety_net_passes

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def cell(nb: dict, grade_id: str) -> dict:
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)


def submission(tmp: Path, name: str, assignment: str, edit=None) -> Path:
    """A student folder holding the solution notebook, changed by ``edit(nb)``."""
    folder = tmp / "inbox" / name
    folder.mkdir(parents=True)
    nb = load(REPO / "solutions" / assignment / f"{assignment}_exercises.ipynb")
    if edit:
        edit(nb)
    (folder / f"{assignment}_exercises.ipynb").write_text(json.dumps(nb))
    return folder


def replace(grade_id: str, source: str):
    def edit(nb):
        cell(nb, grade_id)["source"] = source

    return edit


def both(*edits):
    def edit(nb):
        for e in edits:
            e(nb)

    return edit


def delete(grade_id: str):
    def edit(nb):
        nb["cells"].remove(cell(nb, grade_id))

    return edit


RATIO_OF_TOKENS_NOT_PAIRS = """import torch
def balance_coefficient(indices, E):
    counts = torch.bincount(indices.reshape(-1), minlength=E)
    return counts.min().item() / (indices.shape[0] / E)  # wrong for k > 1: the ideal load is T·k/E
"""
ROUTER_WITHOUT_RENORMALIZATION = """import torch
def route_top_k(logits, k):
    weights, indices = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    return indices, weights
"""
NEVER_RETURNS = """def balance_coefficient(indices, E):
    while True:
        pass
"""
WARNS = """import warnings
import torch
def route_top_k(logits, k):
    warnings.warn("this router prints a warning", UserWarning)
    weights, indices = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    return indices, weights / weights.sum(dim=-1, keepdim=True)
"""


@pytest.fixture(scope="module")
def graded_02(tmp_path_factory):
    """One autograde run of assignment 02 over a class of students with typical and hostile submissions."""
    a = "02_moe_layer"
    tmp = tmp_path_factory.mktemp("course02")
    students = {
        "solution": submission(tmp, "solution", a),
        "untouched": REPO / "exercises" / a,
        "hidden_fail": submission(tmp, "hidden_fail", a, replace("balance_coefficient", RATIO_OF_TOKENS_NOT_PAIRS)),
        "edited_test": submission(
            tmp,
            "edited_test",
            a,
            both(replace("route_top_k", ROUTER_WITHOUT_RENORMALIZATION), replace("test_route_top_k", "pass")),
        ),
        "deleted_test": submission(tmp, "deleted_test", a, delete("test_dispatch_order")),
        "infinite_loop": submission(tmp, "infinite_loop", a, replace("balance_coefficient", NEVER_RETURNS)),
        "warnings": submission(tmp, "warnings", a, replace("route_top_k", WARNS)),
    }
    course = tmp / "course"
    course.mkdir()
    scores = grade_submissions(REPO, a, students, course, "--Execute.timeout=15", jobs=2)
    by_part = {s: {p.part: (p.score, p.max_score) for p in parts} for s, parts in scores.items()}
    return course, by_part


def full_marks_except(parts: dict, *failed: str) -> None:
    for part, (score, max_score) in parts.items():
        assert score == (0 if part in failed else max_score), f"{part}: {score}/{max_score}"


def test_solution_scores_full_marks(graded_02):
    _, by_part = graded_02
    assert len(by_part["solution"]) >= 4
    full_marks_except(by_part["solution"])


def test_untouched_student_notebook_scores_zero(graded_02):
    _, by_part = graded_02
    assert sum(score for score, _ in by_part["untouched"].values()) == 0


def test_hidden_tests_take_points_the_visible_ones_give(graded_02):
    full_marks_except(graded_02[1]["hidden_fail"], "test_balance_coefficient")


def test_an_edited_test_cell_is_restored(graded_02):
    full_marks_except(graded_02[1]["edited_test"], "test_route_top_k")


def test_a_deleted_test_cell_is_restored_and_run(graded_02):
    course, by_part = graded_02
    full_marks_except(by_part["deleted_test"])
    graded = load(course / "autograded" / "deleted_test" / "02_moe_layer" / "02_moe_layer_exercises.ipynb")
    assert cell(graded, "test_dispatch_order")["outputs"] == []  # ran, passed silently


def test_an_infinite_loop_is_stopped_and_the_rest_graded(graded_02):
    full_marks_except(graded_02[1]["infinite_loop"], "test_balance_coefficient")


def test_warnings_on_stderr_do_not_zero_a_correct_answer(graded_02):
    full_marks_except(graded_02[1]["warnings"])


def test_a_failing_test_cell_traceback_quotes_its_own_lines(graded_02):
    """The set-up cell runs again before each test cell, as a request of its own: the traceback of a failing test
    numbers and quotes the lines of the test cell, not those of the set-up pasted above it."""
    course, _ = graded_02
    graded = load(course / "autograded" / "hidden_fail" / "02_moe_layer" / "02_moe_layer_exercises.ipynb")
    test = cell(graded, "test_balance_coefficient")
    lines = "".join(test["source"]).splitlines()
    [failure] = [o for o in test["outputs"] if o["output_type"] == "error"]
    entries = [re.sub(r"\x1b\[[0-9;]*m", "", entry) for entry in failure["traceback"]]  # a header, frames, the error
    [frame] = [e for e in entries if e.startswith(f"Cell In[{test['execution_count']}], line ")]
    quoted = re.findall(r"^(?:-+> |\s+)(\d+) ?(.*)$", frame.split("\n", 1)[1], re.M)
    assert any(text.startswith("assert") for _, text in quoted), frame
    assert [lines[int(number) - 1].rstrip() for number, _ in quoted] == [text.rstrip() for _, text in quoted], frame


def test_feedback_and_grade_export(graded_02):
    course, by_part = graded_02
    assert (course / "feedback" / "solution" / "02_moe_layer" / "02_moe_layer_exercises.html").is_file()
    run_nbgrader(course, "export", "--to=grades.csv")
    rows = (course / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + len(by_part)  # header + one row per student


def assert_scripts_on_disk(report: Path) -> None:
    """Every script the report loads, MathJax among them, is a file on disk beside it: no CDN, so math typesets
    offline."""
    sources = re.findall(r'<script[^>]* src="([^"]+)"', report.read_text())
    assert any(src.split("?")[0].endswith("/MathJax.js") for src in sources), sources
    for src in sources:
        assert "://" not in src and (report.parent / src.split("?")[0]).is_file(), f"{report} loads {src}"


def test_feedback_loads_mathjax_from_disk(graded_02):
    course, by_part = graded_02
    for student in by_part:
        assert_scripts_on_disk(course / "feedback" / student / "02_moe_layer" / "02_moe_layer_exercises.html")


@pytest.mark.skipif(  # in CI it must run: .ci/run installs Chromium
    shutil.which("chromium") is None and os.environ.get("CI") != "true", reason="needs Chromium (Debian: chromium)"
)
def test_feedback_math_is_typeset_offline(graded_02, tmp_path):
    """Chromium with no host name resolving, as on a machine offline, renders the report: MathJax typesets it."""
    report = graded_02[0] / "feedback" / "hidden_fail" / "02_moe_layer" / "02_moe_layer_exercises.html"
    browser = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}"]
    offline = ["--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=30000", "--dump-dom"]
    dom = subprocess.run([*browser, *offline, report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="MathJax"') >= 20  # every $...$ of the page, the summary's top-$k$ included
    assert 'class="MathJax_Error"' not in dom


# The horizontal gaps, in CSS pixels, between the text of neighbouring non-empty cells of every table row on the page.
TABLE_GAPS = """
const text = cell => {
  const range = document.createRange();
  range.selectNodeContents(cell);
  return range.getBoundingClientRect();
};
return Array.from(document.querySelectorAll("table tr"), row => {
  const boxes = Array.from(row.cells).filter(cell => cell.textContent.trim()).map(text);
  return boxes.slice(1).map((box, i) => box.left - boxes[i].right);
}).flat();
"""


@pytest.mark.skipif(  # in CI it must run: .ci/run installs Chromium and its driver
    shutil.which("chromedriver") is None and os.environ.get("CI") != "true",
    reason="needs Chromium and its driver (Debian: chromium, chromium-driver)",
)
def test_feedback_tables_keep_their_cells_apart(graded_02, tmp_path):
    """The report renders a markdown table (the intro's list of parts) with room between its columns: nbgrader's
    header alone gives table cells no padding, and "part" and "function" read "partfunction"."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    report = graded_02[0] / "feedback" / "solution" / "02_moe_layer" / "02_moe_layer_exercises.html"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(report.as_uri())
        gaps = browser.execute_script(TABLE_GAPS)
    finally:
        browser.quit()
    assert len(gaps) >= 12 and min(gaps) >= 8, gaps  # the intro's 6 rows of 3 columns at least


def part_titles(assignment: str) -> dict:
    """``{grade_id: title}`` of the graded test cells, the title from the "## Part ..." heading above each."""
    titles, heading = {}, None
    for c in load(REPO / "solutions" / assignment / f"{assignment}_exercises.ipynb")["cells"]:
        source, meta = "".join(c["source"]), c["metadata"].get("nbgrader", {})
        headings = re.findall(r"^## (Part .*?) \(\d+ points?\)$", source, re.M)
        if headings:
            heading = headings[-1]
        if meta.get("grade") and not meta.get("solution"):
            titles[meta["grade_id"]] = heading
    return titles


def test_feedback_summary_names_every_graded_part_and_its_score(graded_02):
    course, by_part = graded_02
    titles = part_titles("02_moe_layer")
    assert len(titles) == 5 and titles["test_route_top_k"] == "Part 2 · The router: softmax, top-$k$, renormalize"
    for student, parts in by_part.items():
        html = (course / "feedback" / student / "02_moe_layer" / "02_moe_layer_exercises.html").read_text()
        summary = re.search(r'<div id="toc">(.*?)</div>', html, re.S).group(1)
        entries = re.findall(r'<a href="#(\w+)">(.*?)</a> \(<code>\1</code>, Score: ([\d.]+) / ([\d.]+)\)', summary)
        expected = [
            (part, titles[part], str(float(score)), str(float(max_score))) for part, (score, max_score) in parts.items()
        ]
        assert sorted(entries) == sorted(expected), student


# Mistakes real code bases have made, each as a learner's answer: (grade_id of the answer cell, its source,
# the test parts it must lose). Every other part must keep full marks.
SOFTMAX_TWICE = """def switch_loss(logits, indices):
    T, E = logits.shape
    probs = torch.softmax(torch.softmax(logits, dim=-1), dim=-1)
    f = torch.bincount(indices.reshape(-1), minlength=E).to(probs.dtype) / indices.numel()
    return E * (f * probs.mean(dim=0)).sum()
"""
P_FROM_TOP_K_WEIGHTS = """def switch_loss(logits, indices):
    T, E = logits.shape
    top = torch.softmax(logits, dim=-1).gather(1, indices)
    weights = torch.zeros_like(logits).scatter(1, indices, top / top.sum(dim=-1, keepdim=True))
    f = torch.bincount(indices.reshape(-1), minlength=E).to(logits.dtype) / indices.numel()
    return E * (f * weights.mean(dim=0)).sum()
"""
F_PER_TOKEN = """def switch_loss(logits, indices):
    T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)
    f = torch.bincount(indices.reshape(-1), minlength=E).to(probs.dtype) / T  # sums to k, not 1
    return E * (f * probs.mean(dim=0)).sum()
"""
BIAS_UPDATE_REVERSED = """def bias_update(bias, counts, gamma):
    load = counts.to(bias.dtype)
    return bias + gamma * torch.sign(load - load.mean())
"""
KEEPS_C_PLUS_ONE = """def keep_arrival(indices, E, C):
    T, k = indices.shape
    keep = torch.zeros(T, k, dtype=torch.bool)
    filled = [0] * E
    for j in range(k):
        for t in range(T):
            e = indices[t, j].item()
            if filled[e] <= C:
                keep[t, j] = True
                filled[e] += 1
    return keep
"""
TOKEN_MAJOR_ARRIVAL = """def keep_arrival(indices, E, C):
    T, k = indices.shape
    keep = torch.zeros(T, k, dtype=torch.bool)
    filled = [0] * E
    for t in range(T):  # token by token: token 0's second choice arrives before token 1's first
        for j in range(k):
            e = indices[t, j].item()
            if filled[e] < C:
                keep[t, j] = True
                filled[e] += 1
    return keep
"""
MOE_LOSES_SECOND_CHOICES = """def moe_with_capacity(x, indices, weights, keep, experts):
    y = torch.zeros_like(x)
    for e in range(experts.E):
        token = torch.where((indices[:, 0] == e) & keep[:, 0])[0]
        if token.numel():
            y = y.index_add(0, token, experts.expert(e, x[token]) * weights[token, 0].unsqueeze(-1))
    return y
"""
MOE_TOKEN_LEVEL_KEEP = """def moe_with_capacity(x, indices, weights, keep, experts):
    y = torch.zeros_like(x)
    kept_token = keep.any(dim=1, keepdim=True).expand_as(keep)  # a token with one kept pair runs all of them
    for e in range(experts.E):
        token, slot = torch.where((indices == e) & kept_token)
        if token.numel():
            y = y.index_add(0, token, experts.expert(e, x[token]) * weights[token, slot].unsqueeze(-1))
    return y
"""
MOE_RENORMALIZES_SURVIVORS = """def moe_with_capacity(x, indices, weights, keep, experts):
    weights = weights * keep
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.zeros_like(x)
    for e in range(experts.E):
        token, slot = torch.where((indices == e) & keep)
        if token.numel():
            y = y.index_add(0, token, experts.expert(e, x[token]) * weights[token, slot].unsqueeze(-1))
    return y
"""
EXPERT_CHOICE_SOFTMAX_OVER_TOKENS = """def expert_choice(logits, capacity):
    affinity = torch.softmax(logits, dim=0)
    chosen = torch.topk(affinity, capacity, dim=0).indices
    keep = torch.zeros(logits.shape, dtype=torch.bool).scatter(0, chosen, True)
    return keep, affinity * keep
"""
SIGMOID_WEIGHTS_WITH_BIAS = """def sigmoid_with_bias(logits, bias, k):
    scores = torch.sigmoid(logits) + bias
    indices = torch.topk(scores, k, dim=-1).indices
    chosen = scores.gather(1, indices)
    return indices, chosen / chosen.sum(dim=-1, keepdim=True)
"""
BATCH_PRIORITY_PAIRS_BY_OWN_PROBABILITY = """def keep_batch_priority(indices, probs, E, C):
    T, k = indices.shape
    p = probs.detach().gather(1, indices).tolist()  # each pair's own probability
    pairs = sorted(((t, j) for j in range(k) for t in range(T)), key=lambda pair: -p[pair[0]][pair[1]])
    keep = torch.zeros(T, k, dtype=torch.bool)
    filled = [0] * E
    for t, j in pairs:  # all T·k pairs by their own probability: a second choice may beat a first choice
        e = indices[t, j].item()
        if filled[e] < C:
            keep[t, j] = True
            filled[e] += 1
    return keep
"""
BATCH_PRIORITY_RENORMALIZED = """def keep_batch_priority(indices, probs, E, C):
    T, k = indices.shape
    top = probs.detach().gather(1, indices)
    s = (top / top.sum(dim=-1, keepdim=True)).max(dim=-1).values.tolist()  # renormalized top-k weights, not probs
    tokens = sorted(range(T), key=lambda t: -s[t])
    keep = torch.zeros(T, k, dtype=torch.bool)
    filled = [0] * E
    for j in range(k):
        for t in tokens:
            e = indices[t, j].item()
            if filled[e] < C:
                keep[t, j] = True
                filled[e] += 1
    return keep
"""
GROUP_LIMITED_V3_GROUP_SCORE = """def group_limited(logits, k, n_groups, topk_groups, routed_scaling_factor=1.0):
    T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)
    group_scores = probs.view(T, n_groups, E // n_groups).topk(2, dim=-1).values.sum(dim=-1)  # V3's rule, not V2's
    groups = torch.topk(group_scores, topk_groups, dim=-1).indices
    allowed = torch.zeros(T, n_groups, dtype=torch.bool).scatter(1, groups, True)
    allowed = allowed.repeat_interleave(E // n_groups, dim=1)
    top_p, indices = torch.topk(probs.masked_fill(~allowed, -1.0), k, dim=-1)
    return indices, routed_scaling_factor * top_p
"""
GATHER_GEMM_NO_K_MASK = """@triton.jit
def gather_gemm_kernel(x_ptr, w_ptr, out_ptr, pairs_ptr, expert, num_pairs, k, D, N,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    pairs = tl.load(pairs_ptr + rows)
    valid = pairs < num_pairs
    tokens = pairs // k
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # no mask ks < D: the last step reads past the end of the rows
        xs = tl.load(x_ptr + tokens[:, None] * D + ks[None, :], mask=valid[:, None], other=0.0)
        ws = tl.load(w_ptr + expert * D * N + ks[:, None] * N + cols[None, :], mask=cols[None, :] < N, other=0.0)
        acc = tl.dot(xs, ws, acc, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc, mask=cols[None, :] < N)
"""
BLOCK_LAYOUT_OVERPADS = """def block_layout(counts, block_m):
    blocks = counts.long() // block_m + 1  # a spare block when block_m divides the count, and one for idle experts
    padded_offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    padded_offsets[1:] = torch.cumsum(blocks * block_m, dim=0)
    block_expert = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), blocks)
    return padded_offsets, block_expert
"""
SCATTER_COMBINE_DETACHED_WEIGHTS = """def scatter_combine(rows, sorted_pairs, weights):
    T, k = weights.shape
    valid = sorted_pairs < T * k
    pairs = sorted_pairs[valid]
    w = weights.detach().reshape(-1)[pairs]  # the router gets no gradient
    y = torch.zeros(T, rows.shape[1], dtype=rows.dtype, device=rows.device)
    return y.index_add(0, pairs // k, rows[valid] * w.unsqueeze(-1))
"""
SPLITS_ROUND_ROBIN = """def split_sizes(indices_per_rank, E, P):
    input_splits = [torch.bincount(indices.reshape(-1) % P, minlength=P).tolist() for indices in indices_per_rank]
    output_splits = [[input_splits[s][r] for s in range(P)] for r in range(P)]
    return input_splits, output_splits
"""
BYTES_ON_RANK_COUNTED = """def bytes_per_destination(indices, E, P, d_model, element_size):
    rows = torch.bincount(indices.reshape(-1) // (E // P), minlength=P)
    return [int(r) * d_model * element_size for r in rows]


def off_rank_bytes(indices, E, P, rank, d_model, element_size):
    return indices.numel() * d_model * element_size  # every row, its own rank's included
"""
ALPHA_ONCE = """def all_to_all_time(bytes_off_rank, P, alpha, beta):
    return alpha + bytes_off_rank / beta


def crossover_tokens(k, d_model, d_ff, element_size, P, alpha, beta, peak_flops):
    compute_per_token = k * 6 * d_model * d_ff / peak_flops
    comm_per_token = 2 * k * d_model * element_size * (P - 1) / P / beta
    if compute_per_token <= comm_per_token:
        return math.inf
    return 2 * alpha / (compute_per_token - comm_per_token)
"""
LRU_EVICTS_MOST_RECENT = """def lru_hits(trace, cache_size):
    last_use = {}
    hits = misses = 0
    for t, step in enumerate(trace):
        for e in step:
            if e in last_use:
                hits += 1
        for e in step:
            if e in last_use:
                continue
            misses += 1
            if len(last_use) == cache_size:
                victim = max((x for x in last_use if x not in step), key=lambda x: (last_use[x], -x))  # the MOST recent
                del last_use[victim]
            last_use[e] = t
        for e in step:
            last_use[e] = t
    return hits, misses
"""
DISTINCT_SWAPPED = """def expected_distinct(E, k, B):
    return float(E * (1 - (1 - B / E) ** k))  # k/E and B swapped
"""
RECALL_OVER_GUESSES = """def prefetch_recall(guessed, chosen):
    if chosen.numel() == 0:
        return 1.0
    hit = (chosen[:, :, None] == guessed[:, None, :]).any(dim=-1)
    return hit.sum().item() / guessed.numel()  # divides by the guesses, not the chosen pairs
"""
MISS_ONE_FLOP_PER_WEIGHT = """def cheaper_on_miss(d_model, d_ff, tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth,
                    bytes_per_param=2):
    params = 2 * d_model * d_ff
    transfer_time = params * bytes_per_param / pcie_bandwidth
    cpu_time = max(params * tokens / cpu_flops, params * bytes_per_param / cpu_bandwidth)  # 1 FLOP per weight, not 2
    return "cpu" if cpu_time < transfer_time else "transfer"
"""
MISS_BYTES_OF_ONE_MATRIX = """def cheaper_on_miss(d_model, d_ff, tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth,
                    bytes_per_param=2):
    size = d_model * d_ff * bytes_per_param  # d_model·d_ff weights: the down matrix left out
    transfer_time = size / pcie_bandwidth
    cpu_time = max(4 * d_model * d_ff * tokens / cpu_flops, size / cpu_bandwidth)  # the FLOPs of both matrices
    return "cpu" if cpu_time < transfer_time else "transfer"
"""
MISS_FLOPS_ONLY = """def cheaper_on_miss(d_model, d_ff, tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth,
                    bytes_per_param=2):
    params = 2 * d_model * d_ff
    transfer_time = params * bytes_per_param / pcie_bandwidth
    cpu_time = 2 * params * tokens / cpu_flops  # the CPU reading the weights left out
    return "cpu" if cpu_time < transfer_time else "transfer"
"""
MISS_ONE_TOKEN_VS_COPY = """def cheaper_on_miss(d_model, d_ff, tokens, pcie_bandwidth, cpu_flops, cpu_bandwidth,
                    bytes_per_param=2):
    params = 2 * d_model * d_ff
    transfer_time = params * bytes_per_param / pcie_bandwidth
    cpu_time = max(2 * params / cpu_flops, params * bytes_per_param / cpu_bandwidth)  # one token's time
    return "cpu" if cpu_time < transfer_time else "transfer"
"""
TRAINING_FLOPS_ALL_EXPERTS = """def training_flops(d_model, d_ff, E, k, n_layers, vocab_size, tokens):
    router = d_model * E if E > 1 else 0
    per_layer = 4 * d_model * d_model + router + E * 3 * d_model * d_ff  # all E experts: stored, not active
    return 6 * (n_layers * per_layer + vocab_size * d_model) * tokens
"""
TRAINING_FLOPS_NO_ROUTER = """def training_flops(d_model, d_ff, E, k, n_layers, vocab_size, tokens):
    per_layer = 4 * d_model * d_model + k * 3 * d_model * d_ff  # the router's d_model · E weights left out
    return 6 * (n_layers * per_layer + vocab_size * d_model) * tokens
"""
FLOP_MATCHED_BY_E = """def flop_matched_moe(d_model, d_ff, n_layers, E, k):
    if k > E:
        raise ValueError(f"E must be at least k, got E={E}, k={k}")
    if d_ff % k:
        raise ValueError(f"k must divide d_ff, got k={k}, d_ff={d_ff}")
    return {"d_model": d_model, "d_ff": d_ff // E, "E": E, "k": k, "n_layers": n_layers}  # parameter-matched
"""
MI_NAN_ON_EMPTY_CELLS = """import torch
def mutual_information_bits(counts):
    p = counts.double() / counts.sum()
    independent = p.sum(dim=1, keepdim=True) * p.sum(dim=0, keepdim=True)
    return float((p * torch.log2(p / independent)).sum())  # 0 · log 0 gives NaN
"""
MI_MARGINALS_SWAPPED = """import torch
def mutual_information_bits(counts):
    p = counts.double() / counts.sum()
    px, py = p.sum(dim=0), p.sum(dim=1)  # swapped: the column sums are the labels' marginal, not the experts'
    independent = px[:, None] * py[None, :]
    seen = p > 0
    return float((p[seen] * torch.log2(p[seen] / independent[seen])).sum())
"""
FLIPS_COUNT_SLOTS = """def count_flips(indices_a, indices_b):
    a, b = indices_a.sort(dim=1).values, indices_b.sort(dim=1).values
    return int((a != b).sum())  # (token, slot) pairs, not tokens
"""
DECISION_IGNORES_LINK = """def dense_or_moe(memory_bytes, moe_bytes, batch_tokens, E, k, d_ff, hbm_bandwidth,
                 link_bandwidth, peak_flops, bytes_per_param=2):
    fits = moe_bytes <= memory_bytes
    compute_bound = batch_tokens * k / E >= bytes_per_param * peak_flops / (2 * hbm_bandwidth)
    return "moe" if fits and compute_bound else "dense"  # the exchange is never checked
"""
DECISION_E_K_SWAPPED = """def dense_or_moe(memory_bytes, moe_bytes, batch_tokens, E, k, d_ff, hbm_bandwidth,
                 link_bandwidth, peak_flops, bytes_per_param=2):
    fits = moe_bytes <= memory_bytes
    compute_bound = batch_tokens * E / k >= bytes_per_param * peak_flops / (2 * hbm_bandwidth)  # B·E/k, not B·k/E
    exchange_hidden = link_bandwidth >= bytes_per_param * peak_flops / (3 * d_ff)
    return "moe" if fits and compute_bound and exchange_hidden else "dense"
"""
MISTAKES = {
    "03_routing": {
        "ec_softmax_over_tokens": ("expert_choice", EXPERT_CHOICE_SOFTMAX_OVER_TOKENS, ["test_expert_choice"]),
        "bias_in_weights": ("sigmoid_with_bias", SIGMOID_WEIGHTS_WITH_BIAS, ["test_sigmoid_with_bias"]),
        "v3_group_score": ("group_limited", GROUP_LIMITED_V3_GROUP_SCORE, ["test_group_limited"]),  # passes visible
    },
    "04_load_balancing": {  # seq_loss builds on switch_loss; its safety net keeps one mistake from costing twice
        "softmax_twice": ("switch_loss", SOFTMAX_TWICE, ["test_switch_loss"]),
        "p_from_top_k": ("switch_loss", P_FROM_TOP_K_WEIGHTS, ["test_switch_loss"]),
        "f_per_token": ("switch_loss", F_PER_TOKEN, ["test_switch_loss"]),
        "bias_reversed": ("bias_update", BIAS_UPDATE_REVERSED, ["test_bias_update"]),
    },
    "05_capacity": {
        "c_plus_one": ("keep_arrival", KEEPS_C_PLUS_ONE, ["test_keep_arrival"]),
        "token_major": ("keep_arrival", TOKEN_MAJOR_ARRIVAL, ["test_keep_arrival"]),
        "loses_pairs": ("moe_with_capacity", MOE_LOSES_SECOND_CHOICES, ["test_moe_with_capacity"]),
        "token_level_keep": ("moe_with_capacity", MOE_TOKEN_LEVEL_KEEP, ["test_moe_with_capacity"]),
        "renormalizes": ("moe_with_capacity", MOE_RENORMALIZES_SURVIVORS, ["test_moe_with_capacity"]),
        # each passes the visible tests
        "pairs_by_own_probability": (
            "keep_batch_priority",
            BATCH_PRIORITY_PAIRS_BY_OWN_PROBABILITY,
            ["test_keep_batch_priority"],
        ),
        "renormalized_priority": ("keep_batch_priority", BATCH_PRIORITY_RENORMALIZED, ["test_keep_batch_priority"]),
    },
    "06_kernels": {  # each passes the visible tests
        "no_k_mask": ("gather_gemm", GATHER_GEMM_NO_K_MASK, ["test_gather_gemm"]),
        "overpads": ("block_layout", BLOCK_LAYOUT_OVERPADS, ["test_block_layout"]),
        "detached_weights": ("scatter_combine", SCATTER_COMBINE_DETACHED_WEIGHTS, ["test_scatter_combine"]),
    },
    "07_expert_parallel": {  # each passes the visible tests
        "round_robin_experts": ("splits", SPLITS_ROUND_ROBIN, ["test_splits"]),
        "on_rank_counted": ("bytes", BYTES_ON_RANK_COUNTED, ["test_bytes"]),
        "alpha_once": ("crossover", ALPHA_ONCE, ["test_crossover"]),
    },
    "08_inference": {  # each passes the visible tests but the last two
        "lru_evicts_most_recent": ("lru", LRU_EVICTS_MOST_RECENT, ["test_lru"]),
        "distinct_swapped": ("distinct", DISTINCT_SWAPPED, ["test_distinct"]),
        "recall_over_guesses": ("recall", RECALL_OVER_GUESSES, ["test_recall"]),
        "one_flop_per_weight": ("miss", MISS_ONE_FLOP_PER_WEIGHT, ["test_miss"]),
        "bytes_of_one_matrix": ("miss", MISS_BYTES_OF_ONE_MATRIX, ["test_miss"]),
        "cpu_flops_only": ("miss", MISS_FLOPS_ONLY, ["test_miss"]),
        "one_token_against_the_copy": ("miss", MISS_ONE_TOKEN_VS_COPY, ["test_miss"]),
    },
    "09_capstone": {  # each passes the visible tests
        "all_experts": ("training_flops", TRAINING_FLOPS_ALL_EXPERTS, ["test_training_flops"]),
        "no_router": ("training_flops", TRAINING_FLOPS_NO_ROUTER, ["test_training_flops"]),
        "divides_by_E": ("flop_matched", FLOP_MATCHED_BY_E, ["test_flop_matched"]),
        "nan_on_empty_cells": ("mutual_information", MI_NAN_ON_EMPTY_CELLS, ["test_mutual_information"]),
        "marginals_swapped": ("mutual_information", MI_MARGINALS_SWAPPED, ["test_mutual_information"]),
        "counts_slots": ("count_flips", FLIPS_COUNT_SLOTS, ["test_count_flips"]),
        "ignores_link": ("dense_or_moe", DECISION_IGNORES_LINK, ["test_dense_or_moe"]),
        "e_k_swapped": ("dense_or_moe", DECISION_E_K_SWAPPED, ["test_dense_or_moe"]),
    },
}


@pytest.mark.parametrize(
    "assignment",  # 06's notebooks run Triton kernels
    [
        pytest.param(a, marks=[pytest.mark.triton] if a == "06_kernels" else [])
        for a in ASSIGNMENTS
        if a != "02_moe_layer"
    ],
)
def test_other_assignments_grade_full_zero_and_catch_known_mistakes(assignment, tmp_path):
    mistakes = MISTAKES.get(assignment, {})
    students = {"solution": submission(tmp_path, "solution", assignment), "untouched": REPO / "exercises" / assignment}
    for name, (grade_id, source, _) in mistakes.items():
        students[name] = submission(tmp_path, name, assignment, replace(grade_id, source))
    (tmp_path / "course").mkdir()
    scores = grade_submissions(REPO, assignment, students, tmp_path / "course", jobs=2)
    by_part = {s: {p.part: (p.score, p.max_score) for p in parts} for s, parts in scores.items()}
    assert len(by_part["solution"]) >= 4
    assert all(max_score > 0 for _, max_score in by_part["solution"].values())
    full_marks_except(by_part["solution"])
    assert sum(score for score, _ in by_part["untouched"].values()) == 0
    for name, (_, _, failed) in mistakes.items():
        full_marks_except(by_part[name], *failed)


def test_learner_command_prints_scores_and_feedback_path(tmp_path, capsys):
    """`make grade` on a learner's copy: a course folder whose workspace/exercises/ holds a finished notebook."""
    a = "01_dense_vs_sparse_flops"
    shutil.copy(REPO / "nbgrader_config.py", tmp_path)
    for folder in ("solutions", "feedback_templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    shutil.copytree(REPO / "solutions" / a, tmp_path / "workspace" / "exercises" / a)
    assert main([a, "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    scores = out.split("Feedback report")[0]
    for title in part_titles(a).values():  # each part named as the report names it, not by its cell's id
        assert f"\n{title}  " in scores, title
    assert "test_moe_row" not in scores
    report = tmp_path / "feedback" / a / f"{a}_exercises.html"
    assert f"Feedback report: {report}" in out and report.is_file()
    assert_scripts_on_disk(report)


def test_unknown_assignment_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="assignment"):
        release(REPO, "99_nothing", tmp_path)
    with pytest.raises(SystemExit):
        main(["02_moe_layr", "--repo", str(REPO)])
    assert f"ASSIGNMENT must be one of: {' '.join(ASSIGNMENTS)}" in capsys.readouterr().err


def test_a_missing_copy_says_how_to_make_it(tmp_path, capsys):
    shutil.copytree(REPO / "solutions", tmp_path / "solutions")
    with pytest.raises(SystemExit):
        main(["02_moe_layer", "--repo", str(tmp_path)])
    assert "make lab" in capsys.readouterr().err


def files(folder: Path) -> list:
    """The files under ``folder``, relative to it, without Jupyter's git-ignored checkpoints."""
    return sorted(
        p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts
    )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercises_are_generated_from_solutions(assignment, tmp_path):
    release(REPO, assignment, tmp_path)
    committed = REPO / "exercises" / assignment
    generated = files(tmp_path)
    assert generated == files(committed)
    for name in generated:
        assert (committed / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name} differs: run make exercises"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_solution_or_hidden_test_leaks(assignment):
    solution = load(REPO / "solutions" / assignment / f"{assignment}_exercises.ipynb")
    student = load(REPO / "exercises" / assignment / f"{assignment}_exercises.ipynb")
    text = json.dumps(student["cells"])
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    for c in solution["cells"]:
        source = "".join(c["source"])
        for marker in ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS"):
            if marker in source:
                secret = source.split(marker)[1].split("### END")[0].strip()
                assert secret and secret not in text, f"{c['metadata']['nbgrader']['grade_id']} leaked"
    assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")


# The safety nets' helper: each assignment checks an answer quickly after its graded part and, if it fails, puts the
# library's version in its place for the later parts.
timer = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM timer on this platform")


def fails(message):
    raise ValueError(message)


def loops_forever():
    while True:
        pass


def test_safety_net_passes_when_the_check_returns_true():
    assert safety_net_passes(lambda: True) is True
    assert safety_net_passes(lambda: 1 == 1.0, seconds=1) is True


def test_safety_net_fails_when_the_check_returns_false_or_raises():
    assert safety_net_passes(lambda: False) is False
    assert safety_net_passes(lambda: None) is False
    assert safety_net_passes(lambda: fails("an unfinished answer")) is False
    assert safety_net_passes(lambda: 1 / 0) is False
    assert safety_net_passes(lambda: [][0]) is False


def test_safety_net_lets_an_interrupt_through():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        safety_net_passes(interrupted)


@timer
def test_safety_net_stops_a_check_that_runs_too_long():
    start = time.monotonic()
    assert safety_net_passes(loops_forever, seconds=0.2) is False
    assert time.monotonic() - start < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the timer must be off afterwards"
    assert safety_net_passes(lambda: time.sleep(0.05) is None, seconds=2) is True  # a quick check is not cut short


@timer
def test_safety_net_restores_the_previous_handler_and_timer():
    alarms = []

    def handler(signum, frame):
        alarms.append(signum)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        for check in (lambda: True, lambda: fails("no"), loops_forever):
            safety_net_passes(check, seconds=0.2)
            assert signal.getsignal(signal.SIGALRM) is handler
        # a timer already running goes on with the time it had left, and its own handler runs when it is due
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        assert safety_net_passes(loops_forever, seconds=0.1) is False
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 0.4
        deadline = time.monotonic() + 5
        while not alarms and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alarms == [signal.SIGALRM], "the earlier timer must still fire, into its own handler"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_safety_net_works_off_the_main_thread():
    """Python handles signals on the main thread only: elsewhere the check runs, without a time limit."""
    handler_before = signal.getsignal(signal.SIGALRM)
    results = {}

    def run():
        results["passes"] = safety_net_passes(lambda: True)
        results["false"] = safety_net_passes(lambda: False)
        results["raises"] = safety_net_passes(lambda: fails("no"))
        results["slow"] = safety_net_passes(lambda: time.sleep(0.3) is None, seconds=0.1)  # no timer here

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert results == {"passes": True, "false": False, "raises": False, "slow": True}
    assert signal.getsignal(signal.SIGALRM) is handler_before


def test_grading_imports_light():
    """The notebooks import the helper from here, also where nbgrader is not installed (Colab installs the library
    alone): nbgrader, its database and the Jupyter server are imported only by the functions that grade."""
    heavy = ["nbgrader", "sqlalchemy", "jupyter_server", "jupyter_server_mathjax", "nbformat"]
    code = f"import sys, moe_course.grading; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_safety_net_uses_the_library_helper(assignment):
    cells = load(REPO / "solutions" / assignment / f"{assignment}_exercises.ipynb")["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert not any("def safety_net_passes" in source for source in sources), "a pasted copy of safety_net_passes"
    setup = next(c for c in cells if c["metadata"].get("nbgrader", {}).get("grade_id") == "setup")
    assert "from moe_course.grading import safety_net_passes" in "".join(setup["source"])
    nets = [source for source in sources if source.startswith("# Safety net")]
    assert nets and all("safety_net_passes(" in source for source in nets)
