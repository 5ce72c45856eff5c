"""Dashboard forms: they only parse input; the training and fleet services decide and write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.db import models

from meshweb.tenancy.models import Tenant

_EXAMPLE = Path(settings.BASE_DIR) / "docs" / "examples" / "job.json"


def example_spec() -> str:
    """The documented example job's spec, as the submit form's starting point."""
    try:
        return json.dumps(json.loads(_EXAMPLE.read_text())["spec"], indent=2)
    except (OSError, ValueError, KeyError):
        return json.dumps(
            {
                "image": "ghcr.io/infermesh/ddp-example:1.0",
                "entrypoint": ["torchrun"],
                "workers": {"min": 1, "max": 2},
                "gpus_per_worker": 1,
            },
            indent=2,
        )


class JobSubmitForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), to_field_name="slug", empty_label=None)
    name = forms.RegexField(regex=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", max_length=128)
    priority = forms.IntegerField(min_value=0, max_value=100, initial=50)
    spec = forms.CharField(widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}))

    def __init__(self, *args: Any, tenants: models.QuerySet[Tenant], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["tenant"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = tenants

    def clean_spec(self) -> Any:
        raw = self.cleaned_data["spec"]
        try:
            spec = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"The spec is not valid JSON: {exc}.") from exc
        if not isinstance(spec, dict):
            raise forms.ValidationError("The spec must be a JSON object.")
        return spec


class JobScaleForm(forms.Form):
    workers = forms.IntegerField(min_value=1, max_value=1024)


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)
