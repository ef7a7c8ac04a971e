"""The blind human-rating kit: assignment, hidden systems, import with counted rejects,
and the page itself in a real headless Chromium (Playwright)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from raydistill.cluster.rate_kit import (
    KitError,
    assign,
    import_ratings,
    make_kit,
    read_items,
    render_table,
)
from raydistill.pipelines.explanations import DIMENSIONS

SYSTEMS = ("human", "teacher-original", "teacher-revised")


def _items_file(tmp_path: Path, n: int = 12) -> Path:
    path = tmp_path / "items.jsonl"
    with path.open("w") as f:
        for i in range(n):
            for s in SYSTEMS:
                f.write(
                    json.dumps(
                        {
                            "id": f"q{i}",
                            "question": f"Where would you keep item {i} <b>?",
                            "choices": ["shelf", "river", "sky"],
                            "answer": "shelf",
                            "explanation": f"{s}-secret explanation {i}: shelves hold things.",
                            "system": s,
                        }
                    )
                    + "\n"
                )
    return path


def test_pages_hold_distinct_balanced_items_and_hide_the_system(tmp_path):
    items = read_items(_items_file(tmp_path), kit="k1")
    pages = assign(items, raters=4, per_rater=12, raters_per_item=2, seed=3)
    assert [len(p) for p in pages] == [12] * 4
    assert all(len({it.item_id for it in p}) == 12 for p in pages)  # no repeats on a page
    copies = Counter(it.item_id for p in pages for it in p)
    assert set(copies.values()) == {2}  # every chosen item rated twice
    per_system = Counter(it.system for p in pages for it in p)
    assert set(per_system.values()) == {16}  # 48 slots over 3 systems
    # Shuffled: pages are not in system order.
    assert any([it.system for it in p] != sorted(it.system for it in p) for p in pages)
    make_kit(items, tmp_path / "kit", kit="k1", raters=4, seed=3)
    page = (tmp_path / "kit" / "rater_1.html").read_text()
    for s in SYSTEMS:
        assert s not in page.replace(f"{s}-secret", "")  # only inside the explanation text
    assert "<b>?" not in page and "&lt;b&gt;?" in page  # item text is escaped
    key = json.loads((tmp_path / "kit" / "key.json").read_text())
    assert len(key["pages"]["r1"]) == 12 and len(key["items"]) == 24


def test_bad_item_rows_name_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1, "question": "q", "choices": ["a"], "answer": "a", "system": "s"}\n')
    with pytest.raises(KitError, match=r"bad.jsonl: row 1: missing field 'explanation'"):
        read_items(p)
    p.write_text("not json\n")
    with pytest.raises(KitError, match=r"bad.jsonl: line 1 is not valid JSON"):
        read_items(p)
    items = read_items(_items_file(tmp_path, 2))
    with pytest.raises(KitError, match="need 24 items; only 6"):
        assign(items, raters=4, per_rater=12)


def _answers(key: dict, rater: str, score) -> dict:
    return {
        "kit": key["kit"],
        "rater": rater,
        "answers": [
            {"item_id": i, **{d: score(i, d) for d in DIMENSIONS}} for i in key["pages"][rater]
        ],
    }


def test_import_counts_rejects_and_computes_per_system_means_and_agreement(tmp_path):
    items = read_items(_items_file(tmp_path), kit="k1")
    key = make_kit(items, tmp_path / "kit", kit="k1", raters=4, seed=0)
    human = {i for i, v in key["items"].items() if v["system"] == "human"}
    files = []
    for r in ("r1", "r2", "r3", "r4"):
        doc = _answers(key, r, lambda i, d: 5 if i in human else 2)
        files.append(tmp_path / f"{r}.json")
        files[-1].write_text(json.dumps(doc))
    bad = _answers(key, "r1", lambda i, d: 3)
    bad["rater"] = "r9"
    bad["answers"][0]["plausibility"] = 7  # out of range
    bad["answers"][1]["completeness"] = "4.5"  # not an integer
    del bad["answers"][2]["satisfaction"]  # missing
    bad["answers"][3]["item_id"] = "nope"
    bad["answers"].append(dict(bad["answers"][4]))  # the same rater answering twice
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "other.json").write_text(json.dumps({"kit": "k2", "rater": "x", "answers": [{}]}))
    res = import_ratings(tmp_path / "kit", [*files, tmp_path / "bad.json", tmp_path / "other.json"])
    assert res["rejects"] == {
        "bad_score": 2,
        "duplicate": 1,
        "missing_dimension": 1,
        "unknown_item": 1,
        "wrong_kit": 1,
    }
    assert res["ratings"] == 48 + 8  # 4 full pages + 8 of r9's 13 answers
    rows = {r["system"]: r for r in res["table"]}
    assert rows["human"]["ratings"] == 16 + sum(i in human for i in key["pages"]["r1"][4:12])
    assert rows["human"]["raters"] == 5
    # r1..r4 agree exactly on every shared item; r9 rated items nobody else saw twice.
    assert res["agreement"]["pairs"] > 0
    assert 0 < res["agreement"]["exact"] < 1  # r9's 3s disagree with r1's 5s and 2s
    assert "| human |" in render_table(res)


def test_cli_writes_a_kit_and_imports_a_csv(tmp_path):
    items = _items_file(tmp_path)
    run = [sys.executable, "-m", "raydistill.cluster.cli"]
    p = subprocess.run(
        [*run, "rate-kit", "--items", str(items), "--out", str(tmp_path / "kit"), "--kit", "k1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    key = json.loads((tmp_path / "kit" / "key.json").read_text())
    lines = ["kit,rater,item_id," + ",".join(DIMENSIONS)]
    lines += [f"k1,r2,{i}," + ",".join("4" for _ in DIMENSIONS) for i in key["pages"]["r2"]]
    (tmp_path / "r2.csv").write_text("\n".join(lines) + "\n")
    p = subprocess.run(
        [*run, "rate-import", str(tmp_path / "kit"), str(tmp_path / "r2.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "kit" / "ratings.json").read_text())
    assert res["ratings"] == 12 and res["rejects"] == {}
    p = subprocess.run(
        [*run, "rate-kit", "--items", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_the_page_renders_validates_and_saves_answers_in_a_real_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    items = read_items(_items_file(tmp_path), kit="k1")
    key = make_kit(items, tmp_path / "kit", kit="k1", raters=4, seed=1)
    page_file = tmp_path / "kit" / "rater_3.html"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(page_file.as_uri())
            assert page.locator(".item").count() == 12
            assert page.locator("input[type=radio]").count() == 12 * len(DIMENSIONS) * 5
            # Saving with nothing rated is refused and names how many are missing.
            page.click("#save-json")
            assert "12 item(s) not fully rated" in page.inner_text("#status")
            for n, item in enumerate(key["pages"]["r3"]):
                for j, d in enumerate(DIMENSIONS):
                    page.check(f"input[name='{item}__{d}'][value='{1 + (n + j) % 5}']")
            page.fill("#rater", "Ada L.")
            with page.expect_download() as dl:
                page.click("#save-json")
            saved = tmp_path / dl.value.suggested_filename
            dl.value.save_as(saved)
            with page.expect_download() as dl_csv:
                page.click("#save-csv")
            saved_csv = tmp_path / "again.csv"
            dl_csv.value.save_as(saved_csv)
        finally:
            browser.close()
    assert saved.name == "ratings_Ada_L_.json"
    doc = json.loads(saved.read_text())
    assert doc["kit"] == "k1" and doc["rater"] == "Ada L."
    assert [a["item_id"] for a in doc["answers"]] == key["pages"]["r3"]
    assert doc["answers"][2]["plausibility"] == 3 and doc["answers"][2]["completeness"] == 5
    res = import_ratings(tmp_path / "kit", [saved])
    assert res["ratings"] == 12 and res["rejects"] == {}
    # The CSV the page wrote is the same answers; as a second file it is a duplicate.
    res2 = import_ratings(tmp_path / "kit", [saved, saved_csv])
    assert res2["ratings"] == 12 and res2["rejects"] == {"duplicate": 12}


def test_items_from_an_explain_run_take_human_original_and_only_changed_revisions(
    tmp_path, data_dir
):
    from raydistill.cluster.rate_kit import items_from_explain_run
    from raydistill.config import load_config
    from raydistill.pipelines.datasets import load_split

    rows = load_split(load_config(None, ["data.task=cqa_cose"]).data, "train")[:3]
    chain = [
        {
            "id": rows[0]["id"],
            "original": "Because A.",
            "revised": "Because A, not B.",
            "revision": "revised",
        },
        {
            "id": rows[1]["id"],
            "original": "Because C.",
            "revised": "Because C.",
            "revision": "not_needed",
        },
    ]
    (tmp_path / "explanations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chain))
    items = items_from_explain_run(tmp_path, rows)
    got = sorted((it.source_id, it.system) for it in items)
    assert got == sorted(
        [(rows[0]["id"], s) for s in SYSTEMS] + [(rows[1]["id"], s) for s in SYSTEMS[:2]]
    )
    first = next(it for it in items if it.system == "human")
    assert first.answer == rows[0]["choices"][rows[0]["answer"]]
    assert first.explanation == rows[0]["explanation"]
