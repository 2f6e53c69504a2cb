"""What each real dataset is: files with their published SHA-256, label meaning, fields and split rule.

Digests and sizes are copied from each folder's README in the shared data directory (which cites the
upstream repository and commit); ``url`` is the public address ``broaden datasets fetch`` downloads from,
pinned to that commit so the bytes cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from broaden.errors import DatasetError

_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, relative to its folder, with the digest and size its README publishes."""

    path: str
    sha256: str
    size: int | None = None
    url: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one dataset in the data directory.

    ``task`` is ``binary``, ``multiclass`` or ``ordinal`` (graded labels, DESIGN §2's ordinal
    discrepancy); ``pair`` marks query–document inputs. ``manifest`` is a ``sha256sum``-format list
    whose own digest is published; every file it lists is verified through it.
    """

    name: str
    title: str
    num_rows: int
    class_names: tuple[str, ...]
    task: str
    split_rule: str
    license: str
    source: str
    files: tuple[FileSpec, ...] = ()
    manifest: FileSpec | None = None
    manifest_url: str | None = None  # URL template for manifest entries, ``{path}`` = listed path
    manifest_entries: tuple[str, ...] = ()  # the paths the manifest lists, so a fetch can rebuild it
    text_fields: tuple[str, ...] = ()
    pair: bool = False
    image_field: str | None = None
    audio_field: str | None = None
    extra_fields: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def discrepancy_kind(self) -> str:
        """The d(x) form of DESIGN §2 that fits the labels: ordinal for graded or binary, else nominal."""
        return "nominal" if self.task == "multiclass" else "ordinal"

    @property
    def fetchable(self) -> bool:
        return all(f.url for f in self.files) and (
            self.manifest is None or bool(self.manifest_url and self.manifest_entries))


def _pinned(upstream: tuple[str, str], rows) -> tuple[FileSpec, ...]:
    """FileSpecs from ``(local path, path in the upstream repo, size, sha256)`` rows at a pinned commit."""
    repo, commit = upstream
    return tuple(FileSpec(local, digest, size, f"{_RAW}/{repo}/{commit}/{remote}")
                 for local, remote, size, digest in rows)


def _source(upstream: tuple[str, str]) -> str:
    return f"github.com/{upstream[0]}@{upstream[1][:7]}"


_CLICKBAIT = ("bhargaviparanjape/clickbait", "203d979a81545ae6160ff45ffdac83e74469c97a")
_AG = ("Hongcheng-Gao/RobTest-Demo", "ed917c2546bda37908f65e417d28722520eac615")
_CF = ("thomasjungblut/crowdflower", "17379ccdcadfbf5ac17373613ff5708d9cdee2ff")
_MNIST = ("pmallari/MNIST", "cffbed29f2a5bd3b662ffe9cea7c07129fdad5d2")
_FSDD = ("Jakobovski/free-spoken-digit-dataset", "26eb9aaf76e81b692f806f9140c2d2777410d7a1")

_CF_FOLDS = (
    (491060, "b2bcb70371d62cf369db48fa699711be293bcb7a86fceefdc7aeb7fa4f18a88c"),
    (488836, "289a691d78fa6d9cc0f8a0dd751e0bf9b6ede6efe333386e1af3b346c56760bd"),
    (496264, "d15217844326dcb7f4c2bc2ecbe8e9d9245f68d83e08679650731602ae635f8f"),
    (492320, "5479b4418a046fa73a217a048c277eff49b68166a3a6fafa946cae68bd5edbcd"),
    (501071, "7edf919167511619452fb9a3cfaa398ae6e0e646abc4594653616421c4b8b128"),
    (483825, "52775618ac08d67555fe09f35f95b3451eed1a8b52ccd42602250c95b8fc2b99"),
    (493296, "7ca9c22b37786512065e09653620640d04cd9d030acb501f766f41d11a938ab8"),
    (502666, "d5cc87dcfaafde23e73475bea4e0436b805fbba12721d6f8cd7fcd7f6ee28452"),
    (479600, "3138be3e0e4a08e04dcafe5e4e6316a29b5a2e66b4d6550c46bdb51e590134a9"),
    (499261, "d046808cbfd808ac166d502f8f0e214d32cc3e2455684d4a3999d8ee4f56839a"),
)

#: Folds of the CrowdFlower data held out as the fixed test split (about 20 %, stratified by label).
CROWDFLOWER_TEST_FOLDS = (9, 10)
#: Share of ids a hash-of-id split sends to ``test`` where a dataset has no official split.
HASH_TEST_FRACTION = 0.2
#: FSDD recordings with this index or lower form the official test split.
FSDD_MAX_TEST_INDEX = 4
#: FSDD's speakers and recordings per (digit, speaker); a fetch rebuilds SHA256SUMS from them.
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_INDICES = 50

_HASH_RULE = (
    f"test when the first 8 bytes of sha256('<name>:<id>') read as a big-endian integer are below "
    f"{HASH_TEST_FRACTION:g} x 2^64 (about {HASH_TEST_FRACTION:.0%} of ids), else train"
)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="clickbait",
            title="Clickbait vs. news headlines (Chakraborty et al. 2016)",
            num_rows=32_000,
            class_names=("not clickbait", "clickbait"),
            task="binary",
            text_fields=("headline",),
            split_rule=_HASH_RULE,
            license="MIT",
            source=_source(_CLICKBAIT),
            files=_pinned(_CLICKBAIT, (
                ("clickbait_data.gz", "dataset/clickbait_data.gz", 345283,
                 "a174ae2a377908ae58a514416c01a19c882de27fa6b1500da3774114e332a546"),
                ("non_clickbait_data.gz", "dataset/non_clickbait_data.gz", 383115,
                 "4baa2a3cf6b28a48b765e4f763b5d5f03535caae1c70a26f680d39b0ca782a05"),
            )),
        ),
        DatasetInfo(
            name="ag_news",
            title="AG's News topic classification, official test split",
            num_rows=7_600,
            class_names=("World", "Sports", "Business", "Tech"),
            task="multiclass",
            text_fields=("title", "description"),
            split_rule=_HASH_RULE + " (only AG's official test file is in the data directory)",
            license="research and non-commercial use only",
            source=_source(_AG),
            # Upstream's "test copy.csv" is the complete file; its test.csv lacks one row (README).
            files=_pinned(_AG, (
                ("test.csv", "data/agnews/test%20copy.csv", 1857427,
                 "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699"),
                ("classes.txt", "data/agnews/classes.txt", 27,
                 "9fb684e7b14c0fe8369f795e21996150eab77e10b5cb07a60beed7705d451e52"),
            )),
        ),
        DatasetInfo(
            name="crowdflower_search_relevance",
            title="CrowdFlower search results relevance (Kaggle 2015), graded 1-4",
            num_rows=10_158,
            class_names=("1 irrelevant", "2", "3", "4 perfect match"),
            task="ordinal",
            pair=True,
            text_fields=("query", "product_title", "product_description"),
            extra_fields=("relevance_variance", "fold"),
            split_rule=f"test = stratified folds {', '.join(map(str, CROWDFLOWER_TEST_FOLDS))} of the "
            f"upstream 10-fold partition (2,032 rows), train = folds 1-8",
            license="Kaggle competition terms: research or benchmarking only, do not redistribute",
            source=_source(_CF),
            files=_pinned(_CF, (
                (f"folds/{i}-test.csv", f"ValidationFolds/{i}-test.csv", size, digest)
                for i, (size, digest) in enumerate(_CF_FOLDS, start=1)
            )),
        ),
        DatasetInfo(
            name="mnist",
            title="MNIST handwritten digits, official 10k test split",
            num_rows=10_000,
            class_names=tuple(str(d) for d in range(10)),
            task="multiclass",
            image_field="image",
            split_rule=_HASH_RULE + " (only MNIST's official t10k files are in the data directory)",
            license="CC BY-SA 3.0 (as commonly cited)",
            source=_source(_MNIST),
            files=_pinned(_MNIST, (
                ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", 1648877,
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 4542,
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            )),
        ),
        DatasetInfo(
            name="fsdd",
            title="Free Spoken Digit Dataset, 6 speakers, 8 kHz WAV",
            num_rows=3_000,
            class_names=tuple(str(d) for d in range(10)),
            task="multiclass",
            audio_field="audio_path",
            extra_fields=("speaker", "index"),
            split_rule=f"official: recording index 0-{FSDD_MAX_TEST_INDEX} = test (300), 5-49 = train (2,700)",
            license="CC BY-SA 4.0",
            source=_source(_FSDD),
            manifest=FileSpec("SHA256SUMS", "04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b"),
            manifest_url=f"{_RAW}/{_FSDD[0]}/{_FSDD[1]}/{{path}}",
            manifest_entries=tuple(sorted(
                f"recordings/{d}_{s}_{i}.wav" for d in range(10) for s in FSDD_SPEAKERS for i in range(FSDD_INDICES)
            )),
        ),
    )
}

#: Short names accepted wherever a dataset name is.
ALIASES = {"crowdflower": "crowdflower_search_relevance", "agnews": "ag_news"}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (folder name or alias; ``-`` and ``_`` are interchangeable)."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    try:
        return DATASETS[key]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (aliases: {', '.join(ALIASES)})"
        ) from None
