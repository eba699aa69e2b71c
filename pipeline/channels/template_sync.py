"""`campaign templates sync`: a spec's provider account read into the registry (pipeline/channels/templates.py).

WhatsApp (Meta): `provider.options.waba_id` names the WhatsApp Business Account; Chat App: `provider.options.
cust_space_id` (none for a direct customer). Credentials are the spec's own (its named environment variables).
"""

from __future__ import annotations

from typing import Any

from pipeline.channels import chatapp
from pipeline.channels.chatapp_manage import ChatAppManagement
from pipeline.channels.templates import Limits, SyncError, store_numbers, store_templates
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.channels.whatsapp_manage import MetaManagement
from pipeline.spec import CampaignSpec
from pipeline.store import Store


def provider_of(spec: CampaignSpec) -> str:
    if spec.channel not in ("whatsapp", "chatapp"):
        raise SyncError(f"channel {spec.channel!r} has no template registry (whatsapp and chatapp have)")
    return spec.channel


def account_of(spec: CampaignSpec) -> str:
    options = spec.provider.options
    if spec.channel == "whatsapp":
        waba = options.get("waba_id")
        if not waba:
            raise SyncError("provider.options.waba_id: the WhatsApp Business Account id is needed to read templates")
        return str(waba)
    return str(options.get("cust_space_id") or "")


def management(spec: CampaignSpec, base_url: str | None = None, limits: Limits | None = None,
               transport: Any = None) -> MetaManagement | ChatAppManagement:
    """The provider's management client for the spec's account."""
    provider = provider_of(spec)
    if provider == "whatsapp":
        return MetaManagement(
            base_url=base_url or spec.provider.base_url or "https://graph.facebook.com",
            api_version=spec.provider.api_version or "v23.0", waba_id=account_of(spec),
            access_token=spec.secret("access_token", WhatsAppChannel.credentials["access_token"]),
            limits=limits or Limits.from_env(), transport=transport)
    env = chatapp.ChatAppChannel.credentials
    return ChatAppManagement(
        base_url=base_url or spec.provider.base_url or chatapp.DEFAULT_BASE_URL,
        access_key_id=spec.secret("access_key_id", env["access_key_id"]),
        access_key_secret=spec.secret("access_key_secret", env["access_key_secret"]),
        cust_space_id=account_of(spec) or None, limits=limits or Limits.from_env(), transport=transport)


def sync(db: Store, spec: CampaignSpec, base_url: str | None = None, limits: Limits | None = None,
         transport: Any = None) -> dict[str, int]:
    """Reads the account's templates and numbers from the provider into the store; counts of what it wrote."""
    with management(spec, base_url, limits, transport) as api:
        listed = api.templates()
        found = api.numbers()
    counts = store_templates(db, provider_of(spec), api.account, listed)
    counts["numbers"] = store_numbers(db, provider_of(spec), api.account, found)
    return counts


def registry_target(spec: CampaignSpec) -> tuple[str, str] | None:
    """(provider, account) whose registry the campaign is checked and watched against, or None when the spec does
    not name its account: WhatsApp with `provider.options.waba_id`, Chat App with `provider.options.template_registry:
    true` (its account is `cust_space_id`, none for a direct customer)."""
    options = spec.provider.options
    if spec.channel == "whatsapp" and options.get("waba_id"):
        return "whatsapp", str(options["waba_id"])
    if spec.channel == "chatapp" and options.get("template_registry"):
        return "chatapp", str(options.get("cust_space_id") or "")
    return None


def submit(db: Store, spec: CampaignSpec, template: dict[str, Any], base_url: str | None = None,
           transport: Any = None) -> tuple[str, dict[str, Any]]:
    """Creates or edits a template (`{name, language, category, components}` in Meta's shape) at the spec's
    provider account, after Meta's lint and the FAQ's limits (template_rules.py): SyncError naming every finding
    before any call. Returns (create | edit, the provider's answer)."""
    from pipeline.channels.template_rules import lint, submission_refusal
    from pipeline.channels.templates import ProviderTemplate, record_submission

    name, language = str(template.get("name", "")), str(template.get("language", ""))
    category, components = str(template.get("category", "")).upper(), template.get("components") or []
    findings = lint(name, components)
    if category not in ("MARKETING", "UTILITY", "AUTHENTICATION"):
        findings.append(f"category: {category or '(none)'} is not MARKETING, UTILITY or AUTHENTICATION")
    if findings:
        raise SyncError(f"{name}: not submitted: " + "; ".join(findings))
    provider, account = provider_of(spec), account_of(spec)
    refusal, existing = submission_refusal(db, provider, account, name, language)
    if refusal:
        raise SyncError(f"{name}: not submitted: {refusal}")
    with management(spec, base_url, transport=transport) as api:
        if existing is None:
            answer = api.create(name, language, category, components)
            kind, template_id = "create", str(answer.get("id") or answer.get("TemplateCode") or "")
        else:
            assert existing.template_id is not None
            answer = (api.edit(existing.template_id, category, components) if isinstance(api, MetaManagement)
                      else api.edit(existing.template_id, language, category, components))
            kind, template_id = "edit", existing.template_id
    record_submission(db, ProviderTemplate(provider=provider, account=account, name=name, language=language,
                                           status="PENDING", category=category, components=components,
                                           template_id=template_id), kind)
    return kind, answer
