"""Synthetic music-recommendation data in the original S-DPO JSON format.

Every split file (``train.json``, ``val.json``, ``test.json``) is a JSON list of records::

    {"historyList": "a::b::c", "itemList": [20 names], "trueSelection": name}

Generative model (everything is drawn from ``numpy.random.default_rng`` streams spawned
from ``seed``, so the output is byte-identical for the same arguments):

* Items: ``num_genres`` latent genres with ``items_per_genre`` artists each. Names come from
  genre-specific word pools ("Iron Serpent", "The Wandering Fiddlers", "Smoky Cellar Trio"),
  are unique, contain no ``'::'`` and no name is a (case-insensitive) substring of another.
  Within a genre the items have Zipf-like popularity ``p(i | g) ~ 1 / rank^zipf_exponent``.
* Users: a preference ``theta`` over genres, non-zero on 1..``max_user_genres`` genres chosen
  uniformly, weights ~ Dirichlet(1). A sequence of ``min_seq_len..max_seq_len`` distinct items;
  each next item is uniform over the not-yet-consumed items with probability ``noise``, else
  drawn from genre ``g ~ theta`` with ``p(i | g)`` renormalised over that genre's unconsumed items.
* Samples: every position with at least ``min_history`` earlier items; history = the last
  ``max_history`` earlier items; candidates = target + 19 items drawn uniformly from the items
  not in the history and not the target, shuffled. Users are split 8:1:1 into train/val/test.

Reference hit rates written to ``stats.json`` (HR@1 = accuracy of picking the target among
the candidates; ties count fractionally, i.e. as a uniform random tie-break):

* ``best_hr@1`` -- ORACLE UPPER BOUND: picks the candidate with the highest true next-item
  probability given the user's TRUE preference and FULL consumed prefix (also the items older
  than the visible history). No predictor that only sees a record can beat it in expectation.
* ``posterior_hr@1`` -- an ACHIEVABLE reference (so a lower bound on the best achievable): the
  same rule but using only the record, with the posterior mean of the preference given the
  genres of the visible history (genre-level likelihood, exact prior enumerated over genre
  subsets with fixed Dirichlet draws). The Bayes-optimal HR@1 lies between the two.
* ``popularity_hr@1`` -- the candidate that is most often the target in ``train.json``.
* ``random_hr@1`` -- ``1 / num_candidates``.

CLI: ``python data/synthetic.py --out_dir data/synthetic --num_users 2000 --seed 0``
"""

import itertools
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN = "music"
SPLITS = ("train", "val", "test")
HISTORY_SEPARATOR = "::"
# Dirichlet draws per genre subset in the prior grid of the posterior reference predictor.
PRIOR_DRAWS_PER_SUBSET = 16
# Fixed so that the posterior reference does not depend on the data seed.
PRIOR_GRID_SEED = 20240601


@dataclass(frozen=True)
class GenrePool:
    """Word pools from which the artist names of one genre are built."""

    genre: str
    template: str  # uses {adjective} and {noun}
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]


GENRE_POOLS: tuple[GenrePool, ...] = (
    GenrePool(
        "metal", "{adjective} {noun}",
        ("Iron", "Black", "Grim", "Molten", "Savage", "Obsidian", "Blood", "Thunder", "Frost",
         "Steel", "Doom", "Cursed"),
        ("Throne", "Serpent", "Legion", "Pyre", "Hammer", "Crypt", "Warlord", "Abyss", "Tyrant",
         "Skull", "Raven", "Inferno"),
    ),
    GenrePool(
        "jazz", "{adjective} {noun} Trio",
        ("Velvet", "Smoky", "Midnight", "Blue", "Mellow", "Brass", "Satin", "Late", "Silver",
         "Swing", "Cool", "Lazy"),
        ("Lounge", "Avenue", "Note", "Harbor", "Cellar", "Parlor", "Boulevard", "Club",
         "Saxophone", "Moon", "Alley", "Tavern"),
    ),
    GenrePool(
        "electronic", "DJ {adjective} {noun}",
        ("Neon", "Digital", "Hyper", "Quantum", "Laser", "Synthetic", "Static", "Binary", "Chrome",
         "Pixel", "Sonic", "Turbo"),
        ("Pulse", "Circuit", "Voltage", "Grid", "Signal", "Vector", "Matrix", "Echo", "Drift",
         "Cascade", "Orbit", "Wave"),
    ),
    GenrePool(
        "folk", "The {adjective} {noun}",
        ("Wandering", "Meadow", "Willow", "Hollow", "Rustic", "Autumn", "Barefoot", "Amber",
         "Mossy", "Lantern", "Oaken", "Quiet"),
        ("Fiddlers", "Pilgrims", "Sparrows", "Ramblers", "Shepherds", "Drifters", "Harvesters",
         "Tinkers", "Balladeers", "Wrens", "Millers", "Foxes"),
    ),
    GenrePool(
        "hip-hop", "{adjective} {noun}",
        ("Young", "Lil", "Big", "Notorious", "Golden", "Street", "Concrete", "Hustle", "Platinum",
         "Rich", "Royal", "Slick"),
        ("Prophet", "Kingpin", "Verse", "Hustler", "Cipher", "Legend", "Boss", "Remedy", "Bandit",
         "Poet", "Dynasty", "Mogul"),
    ),
    GenrePool(
        "pop", "{adjective} {noun}",
        ("Sugar", "Glitter", "Cherry", "Candy", "Starry", "Rosy", "Honey", "Sunny", "Bubblegum",
         "Crystal", "Pastel", "Dreamy"),
        ("Hearts", "Kisses", "Girls", "Dolls", "Rainbows", "Sweethearts", "Angels", "Butterflies",
         "Daydreams", "Sparkles", "Lullabies", "Valentines"),
    ),
    GenrePool(
        "rock", "{adjective} {noun}",
        ("Electric", "Rusty", "Highway", "Wild", "Crimson", "Broken", "Rebel", "Gravel", "Burning",
         "Loud", "Restless", "Stone"),
        ("Canyon Riders", "Engines", "Outlaws", "Mustangs", "Arrows", "Rockets", "Wolves",
         "Vandals", "Saints", "Jackals", "Hornets", "Coyotes"),
    ),
    GenrePool(
        "classical", "{adjective} {noun}",
        ("Baroque", "Imperial", "Grand", "Nocturne", "Sonata", "Harmonia", "Aurelian", "Celestial",
         "Viennese", "Renaissance", "Chamber", "Gilded"),
        ("Strings", "Consort", "Philharmonic", "Cantata", "Fugue", "Serenade", "Overture",
         "Rhapsody", "Concerto", "Requiem", "Symphonia", "Virtuosi"),
    ),
    GenrePool(
        "country", "{adjective} {noun}",
        ("Dusty", "Whiskey", "Lonesome", "Prairie", "Tumbleweed", "Honky", "Cotton", "Saddle",
         "Copper", "Ranch", "Red Dirt", "Bluegrass"),
        ("Cowboys", "Boots", "Rodeo", "Hollers", "Spurs", "Wagon", "Junction", "Stetsons",
         "Ponies", "Creek", "Troubadours", "Pickers"),
    ),
    GenrePool(
        "reggae", "{adjective} {noun}",
        ("Island", "Roots", "Irie", "Dub", "Sunsplash", "Tropical", "Coral", "Mango", "Palm",
         "Breezy", "Yard", "Kingston"),
        ("Riddim", "Vibes", "Sound System", "Messengers", "Skankers", "Selectors", "Dreads",
         "Tribe", "Dubwise", "Exodus", "Lions", "Zion"),
    ),
    GenrePool(
        "punk", "The {adjective} {noun}",
        ("Snotty", "Rabid", "Riot", "Bratty", "Filthy", "Spiky", "Toxic", "Angry", "Mutant",
         "Plastic", "Sewer", "Nervous"),
        ("Brats", "Rats", "Rejects", "Misfits", "Pins", "Germs", "Slackers", "Delinquents",
         "Creeps", "Zeros", "Maniacs", "Dropouts"),
    ),
    GenrePool(
        "soul", "{adjective} {noun}",
        ("Sweet", "Smooth", "Soulful", "Tender", "Silky", "Heavenly", "Warm", "Gentle", "Deep",
         "Loving", "Sunday", "Brown Sugar"),
        ("Soul", "Groove", "Devotion", "Harmony", "Desire", "Rhythm", "Feeling", "Embrace",
         "Serenity", "Emotions", "Revival", "Testimony"),
    ),
)


@dataclass(frozen=True)
class SyntheticConfig:
    """All knobs of the generative model (written to ``stats.json`` under ``config``)."""

    num_users: int = 600
    num_genres: int = 10
    items_per_genre: int = 60
    seed: int = 0
    noise: float = 0.15
    zipf_exponent: float = 1.0
    min_seq_len: int = 8
    max_seq_len: int = 20
    max_user_genres: int = 3
    min_history: int = 3
    max_history: int = 10
    num_candidates: int = 20

    def validate(self) -> None:
        """Raise ``ValueError`` for settings the generator cannot honour."""
        if not 1 <= self.num_genres <= len(GENRE_POOLS):
            raise ValueError(f"num_genres must be in 1..{len(GENRE_POOLS)}, got {self.num_genres}")
        if self.num_users < 10:
            raise ValueError(f"num_users must be >= 10 so that every split has users, got {self.num_users}")
        if not 1 <= self.max_user_genres <= self.num_genres:
            raise ValueError("max_user_genres must be in 1..num_genres")
        if not 0.0 < self.noise < 1.0:
            raise ValueError(f"noise must be in (0, 1), got {self.noise}")
        if not self.min_history < self.min_seq_len <= self.max_seq_len:
            raise ValueError("need min_history < min_seq_len <= max_seq_len")
        if self.max_history < self.min_history:
            raise ValueError("max_history must be >= min_history")
        # A genre must never run out of unconsumed items, else genre draws are undefined.
        if self.items_per_genre <= self.max_seq_len:
            raise ValueError("items_per_genre must exceed max_seq_len")
        total_items = self.num_genres * self.items_per_genre
        if total_items - self.max_history - 1 < self.num_candidates - 1:
            raise ValueError("too few items to draw the candidate distractors")


@dataclass(frozen=True)
class Catalog:
    """Items, their latent genre and their within-genre popularity ``p(item | genre)``."""

    names: list[str]
    genre_names: list[str]
    genre: np.ndarray  # (num_items,) genre index of each item
    within_genre: np.ndarray  # (num_items,) p(item | its genre); sums to 1 per genre

    @property
    def num_items(self) -> int:
        return len(self.names)

    @property
    def num_genres(self) -> int:
        return len(self.genre_names)


@dataclass(frozen=True)
class Sample:
    """One record as item ids, plus the oracle's next-item probabilities of its candidates."""

    user: int
    history: list[int]
    candidates: list[int]
    target: int
    oracle_scores: np.ndarray  # (num_candidates,) true P(next = candidate | full prefix, theta)


# ----------------------------------------------------------------------------- catalog


def _conflicts(name: str, accepted: list[str]) -> bool:
    """True if ``name`` is a substring of an accepted name or vice versa (case-insensitive)."""
    lowered = name.lower()
    return any(lowered in other or other in lowered for other in accepted)


def make_names(num_genres: int, items_per_genre: int, rng: np.random.Generator) -> list[list[str]]:
    """Draw ``items_per_genre`` distinct artist names per genre from the genre's word pools.

    Combinations are visited in a seeded random order and kept greedily when they do not
    collide (substring-wise) with any name kept so far.
    """
    accepted_lower: list[str] = []
    per_genre: list[list[str]] = []
    for pool in GENRE_POOLS[:num_genres]:
        combos = [pool.template.format(adjective=a, noun=n) for a, n in itertools.product(pool.adjectives, pool.nouns)]
        names: list[str] = []
        for index in rng.permutation(len(combos)):
            name = combos[index]
            if _conflicts(name, accepted_lower):
                continue
            names.append(name)
            accepted_lower.append(name.lower())
            if len(names) == items_per_genre:
                break
        if len(names) < items_per_genre:
            raise ValueError(
                f"genre {pool.genre!r} yields only {len(names)} collision-free names; "
                f"lower items_per_genre (asked {items_per_genre})"
            )
        per_genre.append(names)
    return per_genre


def assert_valid_names(names: list[str]) -> None:
    """Assert names are non-empty, free of '::' and newlines, and none contains another.

    Containment includes equality, so this also asserts uniqueness. The evaluator counts a
    generation as valid when exactly one candidate name occurs in it, which needs this.
    """
    for name in names:
        assert name and name == name.strip(), f"bad name {name!r}"
        assert HISTORY_SEPARATOR not in name, f"name {name!r} contains {HISTORY_SEPARATOR!r}"
        assert "\n" not in name, f"name {name!r} contains a newline"
    # Names cannot span the newline separators, so each name occurs exactly once in the joined
    # text (its own line) iff it is unique and no other name contains it.
    joined = "\n".join(name.lower() for name in names)
    for name in names:
        occurrences = joined.count(name.lower())
        assert occurrences == 1, f"name {name!r} is duplicated or a substring of another name"


def build_catalog(config: SyntheticConfig, rng: np.random.Generator) -> Catalog:
    """Create the item catalog: names, genre of each item and Zipf popularity within genres."""
    per_genre = make_names(config.num_genres, config.items_per_genre, rng)
    names = [name for genre_names in per_genre for name in genre_names]
    assert_valid_names(names)
    zipf = 1.0 / np.arange(1, config.items_per_genre + 1) ** config.zipf_exponent
    zipf /= zipf.sum()
    # Ranks are shuffled so that popularity is unrelated to name or id order.
    within_genre = np.concatenate([zipf[rng.permutation(config.items_per_genre)] for _ in per_genre])
    genre = np.repeat(np.arange(config.num_genres), config.items_per_genre)
    genre_names = [pool.genre for pool in GENRE_POOLS[: config.num_genres]]
    return Catalog(names=names, genre_names=genre_names, genre=genre, within_genre=within_genre)


# ----------------------------------------------------------------------------- users


def sample_preference(rng: np.random.Generator, num_genres: int, max_user_genres: int) -> np.ndarray:
    """A genre preference: Dirichlet(1) weights on 1..max_user_genres uniformly chosen genres."""
    count = int(rng.integers(1, max_user_genres + 1))
    chosen = rng.choice(num_genres, size=count, replace=False)
    preference = np.zeros(num_genres)
    preference[chosen] = rng.dirichlet(np.ones(count))
    return preference


def next_item_probs(catalog: Catalog, consumed: np.ndarray, genre_weights: np.ndarray, noise: float) -> np.ndarray:
    """P(next item) under the generative model given the consumed-item mask and genre weights.

    With probability ``noise`` the next item is uniform over unconsumed items, otherwise a
    genre is drawn from ``genre_weights`` and an item from the genre's popularity restricted
    to its unconsumed items. Consumed items get probability 0.
    """
    available = ~consumed
    uniform = available / available.sum()
    mass = catalog.within_genre * available
    genre_mass = np.bincount(catalog.genre, weights=mass, minlength=catalog.num_genres)
    # validate() guarantees every genre keeps unconsumed items, so genre_mass > 0.
    from_genre = genre_weights[catalog.genre] * mass / genre_mass[catalog.genre]
    return noise * uniform + (1.0 - noise) * from_genre


def sample_sequence(
    rng: np.random.Generator, catalog: Catalog, preference: np.ndarray, config: SyntheticConfig
) -> list[int]:
    """Draw one user's interaction sequence of distinct items, oldest first."""
    length = int(rng.integers(config.min_seq_len, config.max_seq_len + 1))
    consumed = np.zeros(catalog.num_items, dtype=bool)
    sequence: list[int] = []
    for _ in range(length):
        item = int(rng.choice(catalog.num_items, p=next_item_probs(catalog, consumed, preference, config.noise)))
        consumed[item] = True
        sequence.append(item)
    return sequence


def user_samples(
    rng: np.random.Generator,
    catalog: Catalog,
    user: int,
    preference: np.ndarray,
    sequence: list[int],
    config: SyntheticConfig,
) -> list[Sample]:
    """Turn one sequence into records: one per position with at least ``min_history`` earlier items."""
    samples = []
    consumed = np.zeros(catalog.num_items, dtype=bool)
    consumed[sequence[: config.min_history]] = True
    for position in range(config.min_history, len(sequence)):
        target = sequence[position]
        history = sequence[max(0, position - config.max_history) : position]
        allowed = np.ones(catalog.num_items, dtype=bool)
        allowed[history] = False
        allowed[target] = False
        distractors = rng.choice(np.flatnonzero(allowed), size=config.num_candidates - 1, replace=False)
        candidates = rng.permutation(np.append(distractors, target))
        oracle = next_item_probs(catalog, consumed, preference, config.noise)[candidates]
        samples.append(Sample(user, history, [int(c) for c in candidates], target, oracle))
        consumed[target] = True
    return samples


def split_users(num_users: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Assign users 8:1:1 to train/val/test at random."""
    order = rng.permutation(num_users)
    held_out = max(1, round(0.1 * num_users))
    return {
        "train": np.sort(order[2 * held_out :]),
        "val": np.sort(order[held_out : 2 * held_out]),
        "test": np.sort(order[:held_out]),
    }


# ----------------------------------------------------------------------------- reference predictors


def expected_hit(scores: np.ndarray, target_index: int) -> float:
    """HR@1 of argmax(scores) with ties broken uniformly at random, in expectation."""
    best = scores == scores.max()
    return float(best[target_index]) / float(best.sum())


def preference_prior_grid(num_genres: int, max_user_genres: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and log prior weights approximating the preference prior of ``sample_preference``.

    Genre subsets are enumerated exactly (the count is uniform, then the subset); the
    Dirichlet(1) weights within a subset are represented by fixed random draws.
    """
    rng = np.random.default_rng(PRIOR_GRID_SEED)
    points: list[np.ndarray] = []
    log_prior: list[float] = []
    for count in range(1, max_user_genres + 1):
        subsets = list(itertools.combinations(range(num_genres), count))
        draws = 1 if count == 1 else PRIOR_DRAWS_PER_SUBSET
        weight = -math.log(max_user_genres) - math.log(len(subsets)) - math.log(draws)
        for subset in subsets:
            for row in rng.dirichlet(np.ones(count), size=draws):
                point = np.zeros(num_genres)
                point[list(subset)] = row
                points.append(point)
                log_prior.append(weight)
    return np.array(points), np.array(log_prior)


def posterior_mean_preferences(genre_counts: np.ndarray, config: SyntheticConfig, chunk: int = 1024) -> np.ndarray:
    """E[theta | genres of the visible history] for each row of ``genre_counts`` (R x G).

    Uses the genre-level likelihood P(genre of an item | theta) = (1 - noise) * theta_g +
    noise / G, an approximation that ignores within-genre popularity and consumed items; any
    such approximation still gives a valid predictor, hence an achievable HR@1.
    """
    points, log_prior = preference_prior_grid(config.num_genres, config.max_user_genres)
    log_genre_prob = np.ascontiguousarray(np.log((1.0 - config.noise) * points + config.noise / config.num_genres).T)
    # Records of one user share many count vectors; each distinct one is computed once.
    unique_counts, inverse = np.unique(genre_counts, axis=0, return_inverse=True)
    means = np.empty(unique_counts.shape, dtype=float)
    for start in range(0, len(unique_counts), chunk):
        log_post = unique_counts[start : start + chunk] @ log_genre_prob + log_prior
        log_post -= log_post.max(axis=1, keepdims=True)
        weights = np.exp(log_post)
        weights /= weights.sum(axis=1, keepdims=True)
        means[start : start + chunk] = weights @ points
    return means[inverse.reshape(-1)]


def posterior_hits(samples: list[Sample], catalog: Catalog, config: SyntheticConfig) -> list[float]:
    """HR@1 per record of the achievable model-based predictor that only sees the record."""
    if not samples:
        return []
    counts = np.zeros((len(samples), catalog.num_genres))
    for row, sample in enumerate(samples):
        np.add.at(counts[row], catalog.genre[sample.history], 1.0)
    means = posterior_mean_preferences(counts, config)
    hits = []
    for sample, preference in zip(samples, means):
        visible = np.zeros(catalog.num_items, dtype=bool)
        visible[sample.history] = True
        scores = next_item_probs(catalog, visible, preference, config.noise)[sample.candidates]
        hits.append(expected_hit(scores, sample.candidates.index(sample.target)))
    return hits


def popularity_hits(samples: list[Sample], train_target_counts: np.ndarray) -> list[float]:
    """HR@1 per record of picking the candidate that is most often the target in train."""
    return [
        expected_hit(train_target_counts[s.candidates], s.candidates.index(s.target)) for s in samples
    ]


def mean(values: list[float]) -> float:
    """Mean rounded for stable, readable stats (0.0 for an empty list)."""
    return round(float(np.mean(values)), 4) if values else 0.0


# ----------------------------------------------------------------------------- output


def to_record(sample: Sample, names: list[str]) -> dict[str, Any]:
    """The S-DPO JSON record of a sample."""
    return {
        "historyList": HISTORY_SEPARATOR.join(names[i] for i in sample.history),
        "itemList": [names[i] for i in sample.candidates],
        "trueSelection": names[sample.target],
    }


def records_json(records: list[dict[str, Any]]) -> str:
    """A JSON list with one record per line: valid JSON that still diffs and greps well."""
    if not records:
        return "[]\n"
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    return f"[\n{lines}\n]\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and an atomic rename."""
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates 0600 files; give the result ordinary permissions.
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- entry point


def build_samples(config: SyntheticConfig) -> tuple[Catalog, dict[str, np.ndarray], dict[str, list[Sample]]]:
    """Generate catalog, user split and the (shuffled) samples of each split."""
    catalog_rng, user_rng, split_rng, shuffle_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4)
    )
    catalog = build_catalog(config, catalog_rng)
    users = split_users(config.num_users, split_rng)
    split_of = {int(u): split for split, members in users.items() for u in members}
    samples: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for user in range(config.num_users):
        preference = sample_preference(user_rng, config.num_genres, config.max_user_genres)
        sequence = sample_sequence(user_rng, catalog, preference, config)
        samples[split_of[user]].extend(user_samples(user_rng, catalog, user, preference, sequence, config))
    # Shuffled so that any prefix of a split is a mix of users.
    for split in SPLITS:
        samples[split] = [samples[split][i] for i in shuffle_rng.permutation(len(samples[split]))]
    return catalog, users, samples


def compute_stats(
    config: SyntheticConfig, catalog: Catalog, users: dict[str, np.ndarray], samples: dict[str, list[Sample]]
) -> dict[str, Any]:
    """Sizes and reference HR@1 values of every split."""
    train_counts = np.bincount([s.target for s in samples["train"]], minlength=catalog.num_items)
    return {
        "domain": DOMAIN,
        "users": config.num_users,
        "items": catalog.num_items,
        "genres": catalog.genre_names,
        "users_per_split": {split: int(len(users[split])) for split in SPLITS},
        "samples": {split: len(samples[split]) for split in SPLITS},
        "best_hr@1": {
            split: mean([expected_hit(s.oracle_scores, s.candidates.index(s.target)) for s in samples[split]])
            for split in SPLITS
        },
        "posterior_hr@1": {split: mean(posterior_hits(samples[split], catalog, config)) for split in SPLITS},
        "popularity_hr@1": {split: mean(popularity_hits(samples[split], train_counts)) for split in SPLITS},
        "random_hr@1": {split: round(1.0 / config.num_candidates, 4) for split in SPLITS},
        "best_hr@1_method": (
            "oracle upper bound: argmax of the true next-item probability given the user's true "
            "genre preference and full consumed prefix"
        ),
        "posterior_hr@1_method": (
            "achievable lower bound: same rule with the posterior-mean preference given the genres "
            "of the visible history only"
        ),
        "popularity_hr@1_method": "candidate most often the trueSelection in train.json (in-sample on train)",
        "config": asdict(config),
    }


def generate(
    out_dir: str,
    num_users: int = 600,
    num_genres: int = 10,
    items_per_genre: int = 60,
    seed: int = 0,
    noise: float = 0.15,
    zipf_exponent: float = 1.0,
) -> dict[str, Any]:
    """Write train/val/test.json, id2name.txt and stats.json to ``out_dir``; return the stats.

    Output is byte-identical for identical arguments; each file is written atomically.
    """
    config = SyntheticConfig(
        num_users=int(num_users),
        num_genres=int(num_genres),
        items_per_genre=int(items_per_genre),
        seed=int(seed),
        noise=float(noise),
        zipf_exponent=float(zipf_exponent),
    )
    config.validate()
    catalog, users, samples = build_samples(config)
    stats = compute_stats(config, catalog, users, samples)

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "id2name.txt", "".join(f"{i}::{name}\n" for i, name in enumerate(catalog.names)))
    write_atomic(folder / "stats.json", json.dumps(stats, indent=2) + "\n")
    # train.json last: loaders treat its presence as "dataset complete".
    for split in ("val", "test", "train"):
        write_atomic(folder / f"{split}.json", records_json([to_record(s, catalog.names) for s in samples[split]]))
    return stats


if __name__ == "__main__":
    import fire

    fire.Fire(generate)
