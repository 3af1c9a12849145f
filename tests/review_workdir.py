"""A small work folder for the review app's tests, written to the contract in ARCHITECTURE.md.

Built from real aligned photos (../shared/faces/glint24) with real embeddings (the shared MobileFaceNet ONNX model), with
planted problems whose truth the tests know:
- one photo of Barack Obama copied into Hugh Laurie's folder: an `outlier` of Hugh Laurie suggesting Barack Obama;
- Jennifer Aniston's photos split over two folders: a `merge` proposal between "Jennifer Aniston" and "Jennifer A";
- a photo of Drew Barrymore marked as a deepfake of Hugh Laurie: a `fake_mismatch`;
- a file of garbage bytes in Halle Berry's folder: `unreadable`.
Components, similarities and the report's histogram are computed from the embeddings here (the tests then check the app
shows them) and written with the work folder's own writers (curation.workfolder); the cleaning command's own outputs
are exercised by the test that runs `curation.clean`.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import onnxruntime as ort
import pandas as pd

from curation.workfolder import NODE_COLUMNS, WorkFolder, write_embeddings, write_flags, write_nodes, write_report
from labels.imagefile import ImageError, read_rgb
from labels.store import FoundImage, LabelStore, NewFlag

OUTLIER = "Hugh Laurie/planted_obama.png"
FAKE = "Hugh Laurie/fake_0.png"
BROKEN = "Halle Berry/broken.png"
# build_workdir(..., hostile=True) names the folders and the planted file with what Markdown, Streamlit's extensions
# and HTML would turn into something else, to check the app shows every name as it is.
HOSTILE = {
    "Hugh Laurie": "[click me](javascript:alert(2)) **bold**",
    "Barack Obama": "<b>Obama :red[x] $x^2$ _it_ www.evil.example",
    "planted_obama.png": "`tick` *star* <i>i &amp; [a](b) ana@evil.example.png",
}
EDGE = 0.30  # MobileFaceNet cosine: same person ~0.5-0.8, different people ~0.0-0.2 on these crops
DUPLICATE = 0.95
MERGE = 0.5


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def planted(hostile: bool = False) -> tuple[str, str, str]:
    """The planted outlier, deepfake and broken file (paths as ingested) of build_dataset(..., hostile)."""
    if not hostile:
        return OUTLIER, FAKE, BROKEN
    hugh = HOSTILE["Hugh Laurie"]
    return f"{hugh}/{HOSTILE['planted_obama.png']}", f"{hugh}/fake_0.png", BROKEN


def build_dataset(glint: Path, data: Path, per_identity: int = 6, hostile: bool = False) -> dict[str, tuple[str, bool]]:
    """Copy photos into DATA/<identity>/ and return rel_path -> (identity, is_fake) as ingest would find them."""
    folder = (lambda name: HOSTILE.get(name, name)) if hostile else (lambda name: name)
    outlier, fake, broken = planted(hostile)
    found = {}
    for name in ("Hugh Laurie", "Barack Obama", "Halle Berry"):
        for p in sorted((glint / name).iterdir())[:per_identity]:
            _copy(p, data / folder(name) / p.name)
            found[f"{folder(name)}/{p.name}"] = (folder(name), False)
    aniston = sorted((glint / "Jennifer Aniston").iterdir())[:6]
    for i, p in enumerate(aniston):
        ident = "Jennifer Aniston" if i < 3 else "Jennifer A"
        _copy(p, data / ident / p.name)
        found[f"{ident}/{p.name}"] = (ident, False)
    _copy(sorted((glint / "Barack Obama").iterdir())[per_identity], data / outlier)
    found[outlier] = (folder("Hugh Laurie"), False)
    _copy(sorted((glint / "Drew Barrymore").iterdir())[0], data / fake)
    found[fake] = (folder("Hugh Laurie"), True)
    (data / broken).write_bytes(b"this is not a png")
    found[broken] = ("Halle Berry", False)
    return found


def embed(session: ort.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    x = ((rgb.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
    v = session.run(None, {"input": x})[0][0]
    return v / np.linalg.norm(v)


def build_workdir(glint: Path, model: Path, root: Path, hostile: bool = False) -> Path:
    """Create ROOT/data (the dataset) and ROOT/work (store, nodes.parquet, embeddings.npy, report.json, flags.csv);
    `hostile` names two identities and the planted file as in HOSTILE."""
    data, work = root / "data", root / "work"
    found = build_dataset(glint, data, hostile=hostile)
    hugh, obama = (HOSTILE["Hugh Laurie"], HOSTILE["Barack Obama"]) if hostile else ("Hugh Laurie", "Barack Obama")
    planted_outlier, planted_fake, planted_broken = planted(hostile)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    images, vectors = [], {}
    for rel, (ident, fake) in sorted(found.items()):
        path = data / rel
        st = path.stat()
        try:
            rgb = read_rgb(path)
            problem, sha = None, hashlib.sha256(path.read_bytes()).hexdigest()
            vectors[rel] = embed(session, rgb)
            w, h = rgb.shape[1], rgb.shape[0]
        except ImageError as exc:
            problem, sha, w, h = exc.reason, None, None, None
        images.append(FoundImage(rel, st.st_size, st.st_mtime_ns, ident, fake, sha, w, h, problem))
    store = LabelStore.open(work)
    store.set_meta(dataset_root=str(data.resolve()))
    store.add_images(images)
    ids = store.image_ids([f.path for f in images])

    rels = sorted(vectors)
    emb = np.stack([vectors[r] for r in rels]).astype(np.float32)
    row = {r: i for i, r in enumerate(rels)}
    nodes, same, cross = [], [], []
    for ident in sorted({found[r][0] for r in rels}):
        real = [r for r in rels if found[r] == (ident, False)]
        sims = emb[[row[r] for r in real]] @ emb[[row[r] for r in real]].T
        same.extend(sims[np.triu_indices(len(real), 1)])
        g = nx.Graph()
        g.add_nodes_from(range(len(real)))
        g.add_edges_from((i, j) for i in range(len(real)) for j in range(i + 1, len(real)) if sims[i, j] >= EDGE)
        comps = sorted((c for c in nx.connected_components(g) if len(c) > 1), key=len, reverse=True)
        label = {v: -1 for v in g}
        for k, c in enumerate(comps):
            label.update({v: k for v in c})
        main = [v for v in g if label[v] == 0]
        for v, r in enumerate(real):
            others = [m for m in main if m != v]
            nodes.append((ids[r], r, ident, False, label[v], float(sims[v, others].mean()) if others else np.nan, row[r]))
        for r in rels:
            if found[r] == (ident, True):
                best = float((emb[row[r]] @ emb[[row[m] for m in real]].T).max())
                nodes.append((ids[r], r, ident, True, -1, best, row[r]))
    for i, a in enumerate(rels):
        for b in rels[i + 1 :]:
            if found[a][0] != found[b][0]:
                cross.append(float(emb[row[a]] @ emb[row[b]]))
    nodes_df = pd.DataFrame(nodes, columns=list(NODE_COLUMNS))
    folder = WorkFolder(work)
    write_nodes(folder, nodes_df)
    write_embeddings(folder, emb)

    def photos(ident: str) -> np.ndarray:
        return emb[[row[r] for r in rels if found[r] == (ident, False)]]

    # as curation.flagging scores a merge: the share of cross pairs joined by an edge
    merge_score = float((photos("Jennifer Aniston") @ photos("Jennifer A").T >= EDGE).mean())
    flags = [
        NewFlag("outlier", hugh, planted_outlier, obama, -1, float(nodes_df.set_index("path").sim_to_main[planted_outlier])),
        NewFlag("fake_mismatch", hugh, planted_fake, None, None, float(nodes_df.set_index("path").sim_to_main[planted_fake])),
        NewFlag("unreadable", "Halle Berry", planted_broken, None, None, None, {"reason": "not an image"}),
        NewFlag("merge", "Jennifer A", None, "Jennifer Aniston", None, merge_score),
    ]
    store.replace_flags("clean", flags)
    write_flags(folder, store)
    edges = np.linspace(-1, 1, 41)
    report = {
        "counts": {f.kind: 1 for f in flags},
        "align_id": "none-yet",  # no crops cached: the app shows the original photos
        "thresholds": {
            "edge": {"value": EDGE, "method": "user", "description": f"{EDGE:.4f} (fixed for the test fixture)"},
            "duplicate": {"value": DUPLICATE, "method": "fixed for the test fixture"},
            "merge": {"value": MERGE, "method": "share of cross pairs joined by an edge"},
            "split": {"ratio": 0.5, "min_size": 3},
        },
        "noise_rate": {"overall": 1 / len(rels), "per_identity": {hugh: 1 / 7}},
        "similarity_histogram": {
            "bin_edges": edges.tolist(),
            "same_identity": np.histogram(same, edges)[0].tolist(),
            "cross_identity": np.histogram(cross, edges)[0].tolist(),
        },
    }
    write_report(folder, report)
    store.close()
    return work
