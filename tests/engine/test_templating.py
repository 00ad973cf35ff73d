"""Templates: sandbox, strict undefined, unknown values, vars resolution, no re-templating."""

from __future__ import annotations

import pytest

from engine.errors import TemplateError
from engine.model.results import UNKNOWN
from engine.templating import UnknownReference, references, render, render_value, resolve_vars


def test_single_expression_keeps_type():
    assert render("{{ ports }}", {"ports": [80, 443]}) == [80, 443]
    assert render("{{ n + 1 }}", {"n": 1}) == 2
    assert render("p{{ n }}", {"n": 1}) == "p1"


def test_undefined_variable_names_it():
    with pytest.raises(TemplateError) as err:
        render("{{ deploy_rot }}/x", {"deploy_root": "/srv"}, what="steps.sync.args.dest")
    assert "deploy_rot" in str(err.value) and "steps.sync.args.dest" in str(err.value)


@pytest.mark.parametrize(
    "evil",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ x.__dict__ }}",
    ],
)
def test_sandbox_blocks_escapes(evil):
    with pytest.raises(TemplateError):
        render(evil, {"x": object()})


def test_values_are_not_templated_again():
    hostile = "{{ 7 * 7 }}"
    assert render("{{ steps.probe.stdout }}", {"steps": {"probe": {"stdout": hostile}}}) == hostile
    assert render("out: {{ data }}", {"data": hostile}) == "out: " + hostile


def test_unknown_values_raise_unknown_reference():
    ctx = {"steps": {"fetch": {"path": UNKNOWN}}}
    with pytest.raises(UnknownReference):
        render("{{ steps.fetch.path }}/x", ctx)
    with pytest.raises(UnknownReference):
        render("{{ steps.fetch.path }}", ctx)
    with pytest.raises(UnknownReference):
        render_value({"a": ["{{ steps['fetch']['path'] }}"]}, ctx)


def test_references_are_found():
    refs = references("{{ steps.fetch.path }} {% if sources.app.digest %}x{% endif %} {{ steps['b'] }}")
    assert refs == {("steps", "fetch", "path"), ("sources", "app", "digest"), ("steps", "b", None)}


def test_resolve_vars_in_dependency_order_and_cycles():
    out = resolve_vars({"dir": "/srv/{{ app }}/{{ env }}", "app": "{{ name }}-web", "name": "shop", "env": "prod"})
    assert out["dir"] == "/srv/shop-web/prod"
    with pytest.raises(TemplateError, match="cycle: a -> b -> a"):
        resolve_vars({"a": "{{ b }}", "b": "{{ a }}"})


def test_quote_filter():
    assert render("rm {{ p | quote }}", {"p": "a b; rm -rf /"}) == "rm 'a b; rm -rf /'"
