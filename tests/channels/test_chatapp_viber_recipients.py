"""Viber recipients through Chat App: Alibaba documents them as phone numbers only (the SDK's SendChatappMessage and
SenderList `To`: "the phone number of the message recipient"; its "Send Viber messages" guide likewise), so a Chat
App Viber campaign over Viber user ids is refused with one line naming the spec, the file and the column, before
anything is prepared; the same campaign over phone numbers is accepted."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import yaml
from alibabacloud_cams20200606 import models as sdk

from pipeline.dispatch.preparation import prepare_campaign
from pipeline.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, audience: str, channel_type: str = "viber") -> Path:
    data = yaml.safe_load((ROOT / "campaigns/chatapp.yaml").read_text())
    shutil.copy(ROOT / "audiences" / audience, tmp_path / audience)
    data.update(audience=str(tmp_path / audience), provider={"options": {"channel_type": channel_type}})
    path = tmp_path / "chatapp-viber.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_sdk_documents_viber_recipients_as_phone_numbers() -> None:
    # What the refusal rests on: if Alibaba's models ever name a Viber user id, this fails and the rule is revisited.
    for model in (sdk.SendChatappMessageRequest, sdk.SendChatappMassMessageRequestSenderList):
        to_doc = [line for line in inspect.getsource(model.__init__).splitlines()
                  if "**viber**" in line and "recipient" in line]
        assert to_doc and all("phone number of the message recipient" in line for line in to_doc), to_doc


def test_a_chatapp_viber_campaign_over_user_ids_is_refused_naming_the_file_and_column(tmp_path: Path) -> None:
    path = _spec(tmp_path, "sample_viber.csv")
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: audience {tmp_path / 'sample_viber.csv'}: column user_id: ")
    assert "phone numbers only" in message and "channel: viber" in message


def test_the_same_campaign_over_phone_numbers_and_chatapp_messenger_over_ids_are_accepted(tmp_path: Path) -> None:
    assert load_spec(_spec(tmp_path, "sample.csv")).provider.options["channel_type"] == "viber"
    assert load_spec(_spec(tmp_path, "sample_users.csv", "messenger")).audience.name == "sample_users.csv"


def test_an_uploaded_file_of_viber_ids_is_refused_before_preparation(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "sample.csv"))
    uploaded = Path(shutil.copy(ROOT / "audiences/sample_viber.csv", tmp_path / "uploaded.csv"))
    with pytest.raises(SpecError, match=r"^audience .*uploaded\.csv: column user_id: Chat App sends Viber messages"):
        prepare_campaign(spec, "c1", str(tmp_path / "store.sqlite"), tmp_path / "out", audience=uploaded)
    assert not (tmp_path / "store.sqlite").exists()  # refused before the store was opened
