"""Fixtures for the fine-tuning tests: a small hash-embedded index with a restricted document,
and (slow tests) SmolLM2-135M converted once per session into an HF folder."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pytest

from kb_chatbot.core.settings import Settings, load_settings
from kb_chatbot.core.types import Document, Section
from kb_chatbot.ingest.connectors.memory import MemoryConnector

SECRET = "ZEBRA-SECRET-4417"


def make_doc(doc_id: str, text: str, acl: Sequence[str] = ("public",), *, title: str | None = None,
             sections: Sequence[Section] = ()) -> Document:
    return Document(
        id=f"t:{doc_id}", source="t", source_type="wiki", title=title or doc_id.replace("-", " ").title(),
        uri=f"https://wiki.acme.example/{doc_id}", updated_at=datetime(2026, 10, 1, tzinfo=timezone.utc),
        text=text, acl=frozenset(acl), sections=tuple(sections),
    )


#: Ten public pages of facts (two sections each) and one page only people-ops may read.
PAGES = {
    "pto": ("Paid Time Off", "## Allowance\nEvery full-time employee earns 22 working days of PTO per year. "
            "Part-time staff earn PTO in proportion to their hours.\n\n## Carry-over\n"
            "Up to 6 unused days can be carried over and must be used by March 31."),
    "expenses": ("Expenses", "## Deadlines\nExpense reports must be submitted within 45 days of the expense. "
                 "Late reports need approval from the Finance Controller.\n\n## Cards\n"
                 "Employees who travel more than four times a year can request a corporate card."),
    "vpn": ("VPN Access", "## Gateway\nThe VPN gateway hostname is gw-7.vpn.acme.example for all offices. "
            "Connections time out after 12 hours of inactivity.\n\n## Support\n"
            "The IT helpdesk answers VPN tickets within 4 business hours."),
    "oncall": ("On-call", "## Rotation\nThe primary on-call shift runs from Monday 10:00 to the next Monday 10:00. "
               "Each engineer is on call about once every 8 weeks.\n\n## Incidents\n"
               "SEV1 incidents page the incident commander within 5 minutes."),
    "laptops": ("Laptops", "## Hardware\nEngineers receive a laptop with 64 GB of memory on their first day. "
                "Laptops are replaced every 3 years.\n\n## Security\n"
                "Disk encryption must stay enabled on every managed laptop."),
    "offices": ("Offices", "## Lisbon\nThe Lisbon office opens at 08:00 and closes at 19:00 on weekdays. "
                "It has 40 desks on two floors.\n\n## Osaka\n"
                "The Osaka office closes from December 29 to January 3 for the New Year break."),
    "reviews": ("Code Reviews", "## Size\nPull requests should stay under 400 changed lines so a reviewer can read them "
                "in twenty minutes.\n\n## Approvals\nTwo approvals are required before merging to the main branch."),
    "travel": ("Travel", "## Hotels\nHotel stays in Osaka are capped at 190 dollars per night. "
               "Bookings go through the travel portal.\n\n## Meals\n"
               "The meal allowance is 79 dollars per full travel day."),
    "onboarding": ("Onboarding", "## First week\nYour buddy books a 30-minute coffee chat every day during week one. "
                   "New joiners meet the CEO on their first Friday.\n\n## Goals\n"
                   "Managers write three to five goals for the first 90 days."),
    "brand": ("Brand", "## Logo\nUse the orange logo on white backgrounds and the white logo on graphite. "
              "Never stretch or recolour the logo.\n\n## Fonts\nHeadlines use the Inter typeface at weight 700."),
}
RESTRICTED = ("calibration", "Performance Calibration",
              f"## Caps\nNo more than 8 percent of a team may be rated exceptional; code word {SECRET}. "
              "Calibration meetings are held every November.")


def _sections(text: str) -> tuple[Section, ...]:
    out, pos = [], 0
    parts = text.split("\n\n")
    for part in parts:
        start = text.index(part, pos)
        heading = part.splitlines()[0].lstrip("# ").strip()
        out.append(Section(start, start + len(part), heading_path=(heading,)))
        pos = start + len(part)
    return tuple(out)


def sample_docs() -> list[Document]:
    docs = [make_doc(k, text, title=title, sections=_sections(text)) for k, (title, text) in PAGES.items()]
    k, title, text = RESTRICTED
    docs.append(make_doc(k, text, ("group:people-ops",), title=title, sections=_sections(text)))
    return docs



def make_settings(root: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "data_dir": str(root / "runtime"),
        "embedding": {"model": "hash"},
        "generator": {"backend": "fake"},
        "retrieval": {"top_k": 3},
        "sources": [{"name": "t", "type": "wiki", "path": str(root)}],
    }
    data.update(overrides)
    return load_settings(None, **data)


def build_index(settings: Settings, docs: Sequence[Document]) -> None:
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.ingest.sync import sync_sources

    sync_sources(settings, settings.sources, embedder=load_embedder(settings.embedding),
                 connector_factory=lambda src: MemoryConnector(docs))


@pytest.fixture
def kb_settings(tmp_path) -> Settings:
    settings = make_settings(tmp_path)
    build_index(settings, sample_docs())
    return settings


@pytest.fixture(scope="session")
def smol_hf(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (converted from its GGUF once per session)."""
    from kb_chatbot.app.generators.model_files import hf_folder_for, resolve_model
    from kb_chatbot.core.errors import ModelNotFoundError
    from kb_chatbot.core.settings import GeneratorConfig

    models = tmp_path_factory.mktemp("models")
    try:
        ref = resolve_model(GeneratorConfig(model="smollm2-135m"), models)
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    return hf_folder_for(ref, models)


@pytest.fixture(scope="session")
def smol_models_dir(smol_hf) -> Path:
    """A models_dir whose hf/ cache already holds the converted SmolLM2 (settings.models_dir)."""
    return smol_hf.parent.parent


def settings_with_models(root: Path, models_dir: Path, **overrides: Any) -> Settings:
    """Settings under ``root`` whose models_dir reuses the session's converted SmolLM2."""
    s = make_settings(root, **overrides)
    (s.data_dir).mkdir(parents=True, exist_ok=True)
    link = s.data_dir / "models"
    if not link.exists():
        link.symlink_to(models_dir, target_is_directory=True)
    return s
