"""The loopback web in corpus mode: real emoji and icons, named by people, served like a real site.

    python -m testbed.testweb --world corpus --pages 200 --wit web.tsv --truth truth.json

`CorpusWorld` plugs into `testbed.testweb.build_site` (`SiteOptions(world=CorpusWorld(...))`): pages
per emoji subgroup or icon category (the topics take turns, and one that has shown all its pictures drops
out of the turn, so a big subgroup gets more pages), each picture with the texts WIT has, made from the
real names and annotations: a figcaption (reference description), alt text, a title attribute
(attribution: who drew the set, under which licence), the page title (group and subgroup, "Animals and
nature: animal mammal") and the section title (the subgroup). About one page in eight is in another
language (`lang="de"`, ..., the labels and group names of emojibase-data), so the language filter meets
real multilingual text; its
pictures are marked `non_english` in the truth. Every junk kind of the shapes world is injected as
there. Only the split's training styles and concepts are served (`testbed.corpus_data.Split`): the
held-out style and the held-out concepts never reach a crawler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from testbed.corpus import Concept, Corpus, Picture
from testbed.corpus_data import Split, readable_group
from testbed.testweb import PagePlan

STYLE_CREDITS = {
    "google": "Noto Emoji by Google (emoji-datasource-google, Apache-2.0)",
    "twitter": "Twemoji by Twitter (emoji-datasource-twitter, CC BY 4.0)",
    "apple": "Apple Color Emoji (emoji-datasource-apple)",
    "facebook": "Facebook emoji (emoji-datasource-facebook)",
    "openmoji-color": "OpenMoji (CC BY-SA 4.0)",
    "openmoji-black": "OpenMoji line art (CC BY-SA 4.0)",
    "tabler-outline": "Tabler Icons (MIT)",
    "tabler-filled": "Tabler Icons, filled (MIT)",
}
_REFERENCE = {
    # How gallery pages and their alt texts word a picture: the bare name, a short phrase around it ("A
    # picture of a frog", "A drawing of the frog", "A small frog icon": the phrasings of corpus_data's
    # --caption phrased, which closed the gap to the "a photo of a {}." prompts in run C, docs/corpus.md),
    # its keywords, and its group ("Frog, from animals and nature": the category words reach the model only
    # through such texts). No style words: "Frog (openmoji design)" read as Esperanto to the language filter
    # (275 clean pairs of a 1600-page demo lost), and a gallery names what is drawn, not the vendor.
    "emoji": [
        "{Name}",
        "The {name} emoji",
        "A picture of a {name}",
        "An emoji of a {name}",
        "A drawing of the {name}",
        "{Name}, in colour",
        "A small {name} icon",
        "{Name}: {tags}",
        "{Name}, from {group}",
        "{Name}, one of the {group} emoji",
    ],
    "icon": ["{Name} icon", "An icon of a {name}", "{Name}: {tags}", "Line icon: {name}", "{Name} ({style})"],
}
_PARAGRAPHS = [
    "Pictures from the {topic} set, drawn in several styles.",
    "Every {topic} picture below keeps the name its authors gave it.",
    "These are the {topic} pictures of the open emoji and icon sets.",
]
_FOREIGN_TEMPLATES = {
    "de": [
        "{label} – Emoji aus der Gruppe „{section}“",
        "Das Emoji „{label}“, gezeichnet in verschiedenen Stilen",
    ],
    "fr": [
        "{label} — émoji de la catégorie « {section} »",
        "L’émoji « {label} », dessiné dans plusieurs styles",
    ],
    "es": ["{label}: emoji de la categoría «{section}»", "El emoji «{label}», dibujado en varios estilos"],
    "it": ["{label} – emoji della categoria «{section}»", "L’emoji «{label}», disegnata in diversi stili"],
    "nl": [
        "{label} – emoji uit de groep ‘{section}’",
        "De emoji ‘{label}’, getekend in verschillende stijlen",
    ],
    "pt": ["{label} – emoji da categoria «{section}»", "O emoji «{label}», desenhado em vários estilos"],
}
_FOREIGN_GENERIC = {  # an icon has no localised name: the caption says what it is, not which
    "de": "Ein Symbol aus unserer Sammlung, mit dünnen Linien gezeichnet",
    "fr": "Une icône de notre collection, dessinée avec des traits fins",
    "es": "Un icono de nuestra colección, dibujado con líneas finas",
    "it": "Un’icona della nostra collezione, disegnata con linee sottili",
    "nl": "Een pictogram uit onze verzameling, getekend met dunne lijnen",
    "pt": "Um ícone da nossa coleção, desenhado com linhas finas",
}
_FOREIGN_PAGE = {
    "de": ("Emoji-Galerie", "Alle Bilder dieser Seite stammen aus offenen Emoji-Sammlungen."),
    "fr": ("Galerie d’émojis", "Toutes les images de cette page viennent de collections d’émojis libres."),
    "es": ("Galería de emojis", "Todas las imágenes de esta página vienen de colecciones de emojis libres."),
    "it": ("Galleria di emoji", "Tutte le immagini di questa pagina vengono da raccolte di emoji libere."),
    "nl": ("Emoji-galerij", "Alle afbeeldingen op deze pagina komen uit vrije emoji-verzamelingen."),
    "pt": ("Galeria de emojis", "Todas as imagens desta página vêm de coleções de emojis livres."),
}


@dataclass(frozen=True)
class _Topic:
    group: str
    subgroup: str
    kind: str
    names: tuple[str, ...]


@dataclass(eq=False)
class CorpusWorld:
    """A `testbed.testweb.World` over the cached corpus; only the split's training side is served."""

    corpus: Corpus
    split: Split = field(default_factory=Split)
    foreign_page_fraction: float = 0.125
    # Share of pages that show icons (the rest show emoji): with every topic in turn, 41 of 139 topics are
    # Tabler categories of ~124 icons each, and icons took 41 % of a 1600-page demo's pairs, leaving each
    # emoji concept in 2.4 of its 5 training styles (docs/benchmarks.md, make demo-corpus). At one page in
    # eight (17 % of the pairs, ~1,250 icons each named once) the same pairs with and without the icons
    # trained to 25 / 33 % vs 41 / 48 % zero-shot on the held-out emoji style (docs/corpus.md): one in 32.
    icon_page_fraction: float = 1 / 32

    def __post_init__(self) -> None:
        self.concepts: dict[str, Concept] = {}
        self.styles: dict[str, list[Picture]] = {}
        for picture in self.corpus.pictures:
            if picture.style not in self.split.train_styles or self.split.is_held_out(picture.concept):
                continue
            concept = self.corpus.concepts[picture.concept]
            owner = self.concepts.setdefault(concept.name, concept)
            if owner.id == concept.id:  # two concepts with one name: the first keeps it
                self.styles.setdefault(concept.name, []).append(picture)
        topics: dict[tuple[str, str, str], list[str]] = {}
        for name, concept in self.concepts.items():
            topics.setdefault((concept.group, concept.subgroup, concept.kind), []).append(name)
        self.topics = [_Topic(g, s, k, tuple(sorted(n))) for (g, s, k), n in sorted(topics.items())]
        random.Random(self.split.seed).shuffle(self.topics)  # emoji and icon pages interleave
        if not self.topics:
            raise ValueError(f"the corpus has no pictures in the training styles {self.split.train_styles}")
        self._names = sorted(self.concepts)
        self._by_name_kind = {
            kind: [n for n in self._names if self.concepts[n].kind == kind] for kind in ("emoji", "icon")
        }
        self._by_kind = {kind: [t for t in self.topics if t.kind == kind] for kind in ("emoji", "icon")}
        self._by_group: dict[tuple[str, str], list[str]] = {}
        for name in self._names:
            concept = self.concepts[name]
            self._by_group.setdefault((concept.kind, concept.group), []).append(name)
        self.begin_site()

    def begin_site(self) -> None:
        """Forget what was served: each (concept, style) is served once per site until all have been."""
        self._served: set[tuple[str, str]] = set()
        # styles not yet served, by name: `pick` asks this for every name of a topic, group or kind
        self._unserved = {name: len({p.style for p in pictures}) for name, pictures in self.styles.items()}
        self._last: tuple[str, str] | None = None  # the (concept, style) `style` chose last
        self._cursor = {"emoji": 0, "icon": 0}  # the next topic of each kind in the rotation
        self._pages_of: dict[_Topic, int] = {}  # pages shown per topic ("part 2", ...)

    # --- pages ---------------------------------------------------------------------------------------

    def _topic(self, n: int) -> tuple[_Topic, int]:
        """Page n's topic and how many pages it had before this one.

        Icon pages are spread evenly at `icon_page_fraction` (a corpus with one kind only shows that kind).
        Each kind's topics take turns, and a topic whose pictures have all been shown drops out of the turn
        while others still have some: a big subgroup gets more pages than a small one, as on a real site,
        and a page shows its own topic's pictures (its title and section titles name them) until the kind
        has shown everything.
        """
        emoji, icons = self._by_kind["emoji"], self._by_kind["icon"]
        if emoji and icons:
            icon_pages_before = int(n * self.icon_page_fraction)
            kind = "icon" if int((n + 1) * self.icon_page_fraction) > icon_pages_before else "emoji"
        else:
            kind = "emoji" if emoji else "icon"
        pool, start = self._by_kind[kind], self._cursor[kind]
        turn = next(
            (k for k in range(len(pool)) if self._has_fresh(pool[(start + k) % len(pool)])),
            0,  # the kind has shown everything: plain rotation
        )
        topic = pool[(start + turn) % len(pool)]
        self._cursor[kind] = start + turn + 1
        before = self._pages_of.get(topic, 0)
        self._pages_of[topic] = before + 1
        return topic, before

    def _has_fresh(self, topic: _Topic) -> bool:
        return any(self._unserved[name] for name in topic.names)

    def page(self, n: int, rng: np.random.Generator) -> PagePlan:
        topic, cycle = self._topic(n)
        lang = ""
        if topic.kind == "emoji" and rng.random() < self.foreign_page_fraction:
            first = self.concepts[topic.names[0]]
            languages = sorted(set(first.localised_section) & set(_FOREIGN_PAGE))
            lang = str(rng.choice(languages)) if languages else ""
        if lang:
            section = self.concepts[topic.names[0]].localised_section[lang]
            gallery, intro = _FOREIGN_PAGE[lang]
            group, subgroup = section.split(": ", 1)
            return PagePlan(f"{gallery}: {section}", intro, lang, [subgroup, group], topic)
        title = f"{readable_group(topic.group).capitalize()}: {topic.subgroup}"
        if cycle:
            title += f" (part {cycle + 1})"
        what = "emoji" if topic.kind == "emoji" else "icons"
        intro = (
            f"Open {what} of the {topic.group} group, with the names and keywords their authors gave them."
        )
        headings = [
            topic.subgroup.capitalize(),
            f"More {topic.subgroup}",
            f"{topic.subgroup.capitalize()} {what}",
        ]
        return PagePlan(title, intro, "", headings, topic)

    def _fresh_styles(self, name: str) -> list[Picture]:
        return [p for p in self.styles[name] if (name, p.style) not in self._served]

    def pick(self, plan: PagePlan | None, rng: np.random.Generator) -> str:
        topic = plan.topic if plan is not None else None
        names = topic.names if topic is not None else self._names
        # a clean picture is never a copy: when the topic has shown everything, another subgroup of its
        # group fills in (so the page title still names the picture's group), then a topic of the same
        # kind (an emoji page with other emoji: three quarters of all names are icons), then any
        kind = topic.kind if topic is not None else None
        group = self._by_group.get((topic.kind, topic.group), []) if topic is not None else []
        fresh = (
            [n for n in names if self._unserved[n]]
            or [n for n in group if self._unserved[n]]
            or [n for n in self._by_name_kind.get(kind, ()) if self._unserved[n]]
            or [n for n in self._names if self._unserved[n]]
            or list(names)
        )
        return str(fresh[int(rng.integers(len(fresh)))])

    def section_paragraph(self, cls: str | None, rng: np.random.Generator) -> str:
        topic = self.concepts[cls].subgroup if cls in self.concepts else "open emoji"
        return str(rng.choice(_PARAGRAPHS)).format(topic=topic)

    # --- pictures ------------------------------------------------------------------------------------

    def style(self, cls: str, path: str, rng: np.random.Generator) -> str:
        pictures = self._fresh_styles(cls) or self.styles[cls]
        style = pictures[int(rng.integers(len(pictures)))].style
        if (cls, style) not in self._served:
            self._served.add((cls, style))
            self._unserved[cls] -= 1
        self._last = (cls, style)
        return style

    def render(self, cls: str, rng: np.random.Generator, size: int, style: str | None) -> Image.Image:
        pictures = self.styles[cls]
        if style is None:
            picture = pictures[int(rng.integers(len(pictures)))]
        else:
            picture = next(p for p in pictures if p.style == style)
        image = self.corpus.image(picture, size)
        if image is None:  # an SVG that does not render (recorded in the corpus): a blank page-coloured tile
            image = Image.new("RGB", (size, size), (255, 255, 255))
        return image

    # --- texts ---------------------------------------------------------------------------------------

    def captions(self, cls: str, rng: np.random.Generator) -> tuple[str, str, str]:
        concept = self.concepts[cls]
        style = self.styles[cls][0].style
        tags = ", ".join(t for t in concept.tags[:4]) or concept.group
        fields = {
            "Name": cls[:1].upper() + cls[1:],
            "name": cls,
            "tags": tags,
            "style": style.split("-")[0],
            "group": readable_group(concept.group),
        }
        templates = _REFERENCE[concept.kind]
        reference = str(rng.choice(templates)).format(**fields)
        alt_choices = [cls, *(s for s in concept.short_names if s != cls)]
        alt = str(rng.choice(alt_choices)) if rng.random() < 0.7 else ""
        attribution = (
            f"{fields['Name']}, from {STYLE_CREDITS.get(style, style)}" if rng.random() < 0.4 else ""
        )
        return reference, alt, attribution

    def shown_as_junk(self, cls: str) -> None:
        # A picture shown as junk (other-language texts on a translated page, broken bytes, a file name for
        # a caption, a dead link, ...) does not use the picture up: a real site shows its good pictures
        # besides its junk. Used up, junk took 2,534 of the 8,994 emoji pictures of a 1600-page site
        # (1,118 of them on translated pages), and a model trained on the web fell ~20 points short of one
        # trained on every picture (docs/corpus.md).
        if self._last is not None and self._last[0] == cls:
            if self._last in self._served:
                self._served.discard(self._last)
                self._unserved[cls] += 1
            self._last = None

    def foreign_caption(self, cls: str, language: str, rng: np.random.Generator) -> str:
        concept = self.concepts[cls]
        if language not in concept.localised:
            return _FOREIGN_GENERIC.get(language, _FOREIGN_GENERIC["de"])
        section = concept.localised_section.get(language, "")
        template = _FOREIGN_TEMPLATES[language][int(rng.integers(2)) if section else 1]
        return template.format(label=concept.localised[language], section=section)

    def other_class(self, cls: str, rng: np.random.Generator) -> str:
        """A concept of another subgroup, half the time of the same group (a hard mismatch)."""
        concept = self.concepts[cls]
        same_group = [
            n
            for n in self._names
            if self.concepts[n].group == concept.group and self.concepts[n].subgroup != concept.subgroup
        ]
        pool = same_group if same_group and rng.random() < 0.5 else [n for n in self._names if n != cls]
        return str(pool[int(rng.integers(len(pool)))])
