"""The report's sections: each ``<name>_section(ctx) -> dict | None`` gathers plain data for one part of
the page from the run and the cnnlens APIs; None means its inputs are absent and the section is left out.
Each renders with ``templates/section_<id>.html.j2``."""
