"""Dataset registry: what each dataset is, where it comes from, its checksums and licence.

Nothing here downloads. Files are looked up under the **data root**:

1. ``$LONGSTREAM_DATA`` if set (tests, CI and benchmarks set it to ``../shared/data``);
2. else the repository's sibling ``../shared/data`` if it exists;
3. else ``<cache>/data`` (``$LONGSTREAM_HOME`` or ``~/.cache/longstream``; see :mod:`longstream.pipelines.hub`).

Each :class:`Dataset` lists its files relative to the root with their sha256 (copied
from the staged copy's ``SHA256SUMS``). Free Spoken Digit's 3,000 recordings are
verified through their own manifest ``speech/fsdd/SHA256SUMS`` whose sha256 is pinned
here. ``dataset_path(name)`` returns the dataset's main path or raises a
:class:`~longstream.pipelines.common.UserError` naming the canonical source and where to put the
files. ``longstream data list|verify|path`` is the command-line view.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .common import REPO_ROOT, UserError, sha256_file

__all__ = ["Dataset", "DATASETS", "data_root", "get_dataset", "dataset_path", "verify_dataset", "list_datasets"]

_FILES_ETTH1 = {
    "timeseries/ett/ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
}
_FILES_BACTERIA_GENOMES = {
    "genomics/bacteria/E.Coli/DH1.fasta.gz": "53621b05f11c062c3600ed53fc05f2e6db3605d8104260674ff019e536acdccd",
    "genomics/bacteria/E.Coli/MG1655-K12.fasta.gz": "ae952b2873ef8badc956925a61c5b536d4e40322b4e8b15dde3d8eda7ce3c879",
    "genomics/bacteria/H.Pylori/ELS37.fasta.gz": "cbb724aae0e46b32488606ec436679e58631943b39abcc37049989dd47aed49c",
    "genomics/bacteria/H.Pylori/Gambia94_24.fasta.gz": "92e4798809e20eb07cbc08bd4f2536b316a7a0cd3dd8d596b7638f9dd6d626f6",
    "genomics/bacteria/H.Pylori/Puno120.fasta.gz": "79fa6c9c68e8ea4feeec8a33bdf510a2f48c15c14cb04379e5ef72e44434557f",
    "genomics/bacteria/H.Pylori/SJM180.fasta.gz": "6b5971d7c592ad7c4e609845e4667c3fd27f2ab73967b6475677295e2ba5d879",
    "genomics/bacteria/S.Aureus/COL.fasta.gz": "e42c7cbcb34ea73ed05d79eff4e222d8852caf412c859a94a7feb03ec42d0648",
    "genomics/bacteria/S.Aureus/N315.fasta.gz": "f00af0fea6d59d4aef1cac64be57a5215739b7c23fae7f6bc0d44e1f9805a0e9",
    "genomics/bacteria/S.Aureus/RF122.fasta.gz": "462b4f0756da814c67b526f5a226ec0c53125ddf1cb8c89acc968fc7c5e16996",
    "genomics/bacteria/S.Aureus/USA300_FPR3757.fasta.gz": "61066f50bd925c6adc75fd98df7c864b1bfcbfa30f3c773b2a4a3a88084041d4",
    "genomics/bacteria/V.Cholerae/O1_Inaba.fasta.gz": "21142953cd1733f09cf66d1540a1685a8122ba97bf9ba5255e6a8ff5344b624e",
    "genomics/bacteria/V.Cholerae/O1_biovar.fasta.gz": "ef8ecca73105608a904c9e81973ef3af472096e349a463fbec324411c6566cc9",
    "genomics/bacteria/V.Cholerae/O395.fasta.gz": "3ecf6fc1bfac8787e560fe4c9965d1248bb2de1987d0cb7eb5470f01a1ca8772",
}
_FILES_LAMBDA_PHAGE = {
    "genomics/lambda_virus.fa.gz": "08fe207fcb4bbe47e80cc7469e68d1f1d8d497a836fe1c09f5a9734d2e4cd9e0",
}
_FILES_MTB_H37RV = {
    "genomics/mtb/NC_000962.3.fa.gz": "f47c8bc84fd87fc538ce1f04469ff306818c8527b1e35426d820fc455e3a9940",
    "genomics/mtb/NC_000962.3.gb": "b291c4f4ed4c9b99f108f9b3c3dd7f948161bdccb24287687d5d3cc147664f34",
}
_FILES_FASHION_MNIST = {
    "vision/fashion-mnist/t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "vision/fashion-mnist/t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "vision/fashion-mnist/train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "vision/fashion-mnist/train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}
_FILES_OPENCV_VIDEOS = {
    "video/opencv/Megamind.avi": "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
    "video/opencv/tree.avi": "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
    "video/opencv/vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
}
_FILES_DEEPMIMIC_MOTIONS = {
    "motion/deepmimic/humanoid3d_backflip.txt": "ffc5e117f69364e239eeedc86d6a30ab854500a375a1c137a405f1b7652905e6",
    "motion/deepmimic/humanoid3d_cartwheel.txt": "17453459a40ec4ea08346072748ae3c7c384b49e619753e9779637fa8a9f7c49",
    "motion/deepmimic/humanoid3d_crawl.txt": "104a3b675131a43e7a214e24c0ed631c6a0d814b85c8b66b71ce63b23a5731ae",
    "motion/deepmimic/humanoid3d_dance_a.txt": "15ef3731f594edc9ed078170f1075815cc164acaca9e35a46db12a31ac64b717",
    "motion/deepmimic/humanoid3d_dance_b.txt": "b5a9d7a3f2304f6242776d7ff6d19d1f6bcb98d78d68622761c3843b614a92b5",
    "motion/deepmimic/humanoid3d_getup_facedown.txt": "1bd1a96e9175f65eb66e10f225473b4467bd70c68e283f4006b2ab090e337c0b",
    "motion/deepmimic/humanoid3d_getup_faceup.txt": "5936c32d51dad9b0cd5e61df681079d160436cdce845c312f200d7a347c4040d",
    "motion/deepmimic/humanoid3d_jump.txt": "a433557e94b193d8a95530572a0e32f387eb6d9996987b4216efb65444c3c641",
    "motion/deepmimic/humanoid3d_kick.txt": "177cfb399466309ba7f4a8a987c3b6f6edde1cbe8b2d476e53dc6061ec5d4bac",
    "motion/deepmimic/humanoid3d_punch.txt": "1ab4b654cecdb4ff3b2a4bf4086e50397bef28435bb59ab3aedd6a6bdc926fde",
    "motion/deepmimic/humanoid3d_roll.txt": "50d75c2243b2859f8dcae4ad8fa14b59054dd9ee529b4fb52ec14470cd982c55",
    "motion/deepmimic/humanoid3d_run.txt": "2cbe488023b243e5769299158ce7c78875ec4b701a2ffe6c0beeaf83d16ca87b",
    "motion/deepmimic/humanoid3d_spin.txt": "9614f10b92e7a8b123990ad5bcfafc65aa4d8fa8ac7f10ade3c3591122d34425",
    "motion/deepmimic/humanoid3d_spinkick.txt": "60ec9c200d96e0cd71693061f24db0bd8da9eb295daf487f6f60f8dfb324075a",
    "motion/deepmimic/humanoid3d_walk.txt": "32d082c3599bc40aac50b1afa196ff1e2cf3842bb40f0541ab088845f6328a41",
}
_FILES_CMU_MOCAP = {
    "motion/cmu/01_01.bvh": "1d9ee909452ee62784306545cf1fcd634243db1173e0c90cecbed793e50361a8",
    "motion/cmu/01_03.bvh": "72d3f37de5af9adfc228dda72422cadb8cfc58d1cd8336076241ba115715c87c",
}

_FSDD_MANIFEST = ("speech/fsdd/SHA256SUMS", "04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b")


@dataclass(frozen=True)
class Dataset:
    """One registered dataset. ``path`` is relative to the data root (file or folder)."""

    name: str
    description: str
    path: str
    source: str
    licence: str
    citation: str
    loader: str  # where the code that reads it lives (module:function), a hint for users
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    manifest: tuple[str, str] | None = None  # (relative SHA256SUMS path, its sha256): files listed inside
    size: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name, "description": self.description, "path": self.path, "source": self.source,
            "licence": self.licence, "citation": self.citation, "loader": self.loader, "size": self.size,
            "files": len(self.files) + (1 if self.manifest else 0),
        }


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="ETTh1",
            description="Electricity Transformer Temperature, hourly, station 1 (date + 6 loads + OT)",
            path="timeseries/ett/ETTh1.csv",
            source="https://github.com/zhouhaoyi/ETDataset (ETT-small/ETTh1.csv)",
            licence="CC BY-ND 4.0 (redistribute unmodified, with attribution)",
            citation="Zhou et al., Informer: Beyond Efficient Transformer for Long Sequence Time-Series "
            "Forecasting, AAAI 2021",
            loader="longstream.pipelines.timeseries.data",
            files=_FILES_ETTH1,
            size="17,420 rows x 7 variables",
        ),
        Dataset(
            name="fsdd",
            description="Free Spoken Digit Dataset: spoken digits 0-9, 8 kHz mono wav, {digit}_{speaker}_{take}.wav",
            path="speech/fsdd/recordings",
            source="https://github.com/Jakobovski/free-spoken-digit-dataset (recordings/)",
            licence="CC BY-SA 4.0",
            citation="Jackson et al., Free Spoken Digit Dataset (FSDD), 2018, doi:10.5281/zenodo.1342401",
            loader="longstream.pipelines.speech.data",
            manifest=_FSDD_MANIFEST,
            size="3,000 clips, 6 speakers x 10 digits x 50 takes",
        ),
        Dataset(
            name="bacteria-genomes",
            description="13 complete bacterial genomes of E. coli, H. pylori, S. aureus, V. cholerae (FASTA)",
            path="genomics/bacteria",
            source="NCBI nucleotide (accessions in the FASTA headers); packaged by Debian ragout-examples",
            licence="public sequence data; Debian packaging BSD-3-Clause",
            citation="NCBI RefSeq/GenBank; Kolmogorov et al., Ragout, Bioinformatics 2014 (packaging)",
            loader="longstream.pipelines.genomics.data",
            files=_FILES_BACTERIA_GENOMES,
            size="13 genomes, ~40 Mbp",
        ),
        Dataset(
            name="lambda-phage",
            description="Enterobacteria phage lambda genome NC_001416.1 (FASTA)",
            path="genomics/lambda_virus.fa.gz",
            source="https://www.ncbi.nlm.nih.gov/nuccore/NC_001416.1 (copy from the bowtie2 examples)",
            licence="public sequence data (bowtie2 examples, GPL-3)",
            citation="Sanger et al., Nucleotide sequence of bacteriophage lambda DNA, J Mol Biol 1982",
            loader="longstream.pipelines.genomics.data",
            files=_FILES_LAMBDA_PHAGE,
            size="48,502 bp",
        ),
        Dataset(
            name="mtb-h37rv",
            description="Mycobacterium tuberculosis H37Rv genome NC_000962.3 and GenBank annotation (3,906 CDS)",
            path="genomics/mtb",
            source="https://www.ncbi.nlm.nih.gov/nuccore/NC_000962.3 (copy from Debian's ariba package)",
            licence="public sequence data (Debian ariba, GPL-3)",
            citation="Cole et al., Deciphering the biology of Mycobacterium tuberculosis, Nature 1998",
            loader="longstream.pipelines.genomics.data",
            files=_FILES_MTB_H37RV,
            size="4,411,532 bp",
        ),
        Dataset(
            name="fashion-mnist",
            description="Fashion-MNIST, IDX format, 28x28 grey, 10 classes",
            path="vision/fashion-mnist",
            source="https://github.com/zalandoresearch/fashion-mnist",
            licence="MIT",
            citation="Xiao, Rasul, Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine "
            "Learning Algorithms, arXiv:1708.07747, 2017",
            loader="longstream.pipelines.vision.data",
            files=_FILES_FASHION_MNIST,
            size="60,000 train + 10,000 test",
        ),
        Dataset(
            name="opencv-videos",
            description="OpenCV sample videos vtest.avi (pedestrians), Megamind.avi (animation), tree.avi",
            path="video/opencv",
            source="https://github.com/opencv/opencv (samples/data)",
            licence="Apache-2.0 / BSD (OpenCV samples)",
            citation="OpenCV sample data, https://github.com/opencv/opencv",
            loader="longstream.pipelines.video.data",
            files=_FILES_OPENCV_VIDEOS,
            size="795 / 270 / 68 frames",
        ),
        Dataset(
            name="deepmimic-motions",
            description="DeepMimic reference motions for a 3D humanoid, 15 labelled clips (walk, run, ...)",
            path="motion/deepmimic",
            source="https://github.com/bulletphysics/bullet3 (data/motions)",
            licence="zlib (Bullet Physics)",
            citation="Peng et al., DeepMimic: Example-Guided Deep Reinforcement Learning of Physics-Based "
            "Character Skills, SIGGRAPH 2018",
            loader="longstream.pipelines.motion.data",
            files=_FILES_DEEPMIMIC_MOTIONS,
            size="15 clips",
        ),
        Dataset(
            name="cmu-mocap",
            description="CMU Graphics Lab motion capture, subject 1, clips 01_01 and 01_03 (BVH)",
            path="motion/cmu",
            source="http://mocap.cs.cmu.edu (packaged by Debian's assimp-testmodels)",
            licence="CMU mocap: free to use",
            citation="CMU Graphics Lab Motion Capture Database, http://mocap.cs.cmu.edu",
            loader="longstream.pipelines.motion.data",
            files=_FILES_CMU_MOCAP,
            size="2 long clips",
        ),
    ]
}


def data_root() -> Path:
    """The data root: ``$LONGSTREAM_DATA`` > the repo's ``../shared/data`` > ``<cache>/data``."""
    env = os.environ.get("LONGSTREAM_DATA")
    if env:
        return Path(env).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    from .hub import cache_root

    return cache_root() / "data"


def list_datasets() -> list[str]:
    return list(DATASETS)


def get_dataset(name: str) -> Dataset:
    if name in DATASETS:
        return DATASETS[name]
    low = {k.lower(): k for k in DATASETS}
    if name.lower() in low:
        return DATASETS[low[name.lower()]]
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (see `longstream data list`)")


def _missing_message(ds: Dataset, root: Path, what: Path) -> str:
    return (
        f"dataset {ds.name} not found: {what} does not exist. Get it from {ds.source} "
        f"(licence: {ds.licence}) and put it at {root / ds.path} "
        f"(data root {root}; set LONGSTREAM_DATA to use another root)"
    )


def dataset_path(name: str, file: str | None = None, *, root: str | os.PathLike | None = None) -> Path:
    """Absolute path of dataset ``name`` (or of ``file`` inside it); UserError if missing.

    ``file`` is relative to the dataset's own ``path`` (e.g. ``dataset_path("fashion-mnist",
    "train-images-idx3-ubyte.gz")``).
    """
    ds = get_dataset(name)
    base = Path(root) if root is not None else data_root()
    p = base / ds.path
    if file is not None:
        p = p / file
        if not p.resolve().is_relative_to((base / ds.path).resolve()):
            raise UserError(f"{file!r} escapes dataset {ds.name}")
    if not p.exists():
        raise UserError(_missing_message(ds, base, p))
    return p


def _manifest_entries(manifest: Path) -> dict[str, str]:
    out = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            sha, rel = line.split(None, 1)
            out[rel.strip().lstrip("*")] = sha
    return out


def verify_dataset(name: str, *, root: str | os.PathLike | None = None, quick: bool = False) -> list[str]:
    """Problems found with dataset ``name`` under the root (empty list = all files verified).

    ``quick`` checks presence and manifest only, not every file's sha256.
    """
    ds = get_dataset(name)
    base = Path(root) if root is not None else data_root()
    problems: list[str] = []
    files = dict(ds.files)
    if ds.manifest is not None:
        mrel, msha = ds.manifest
        mp = base / mrel
        if not mp.exists():
            return [_missing_message(ds, base, mp)]
        if sha256_file(mp) != msha:
            return [f"{mp}: manifest sha256 mismatch (modified copy?)"]
        mdir = Path(mrel).parent
        files.update({str(mdir / rel): sha for rel, sha in _manifest_entries(mp).items()})
    for rel, sha in files.items():
        p = base / rel
        if not p.exists():
            problems.append(f"missing {p}" if problems else _missing_message(ds, base, p))
        elif not quick and sha256_file(p) != sha:
            problems.append(f"{p}: sha256 mismatch (corrupt or modified; re-copy it from {ds.source})")
    return problems
