rule render:
    """Figures (PNG+PDF), tables (CSV/Markdown/LaTeX) and the HTML report with provenance."""
    input:
        global_table=rules.aggregate.output.global_table,
        layer_table=rules.aggregate.output.layer_table,
        claims=rules.aggregate.output.claims,
        comparison=rules.aggregate.output.comparison,
        int8_table=rules.aggregate.output.int8_table,
        top5_table=rules.aggregate.output.top5_table,
        stats=measured_results,
        int8=int8_results,
        probes=probe_results,
        calibration=calibration_results,
        corpus_manifest=rules.corpus.output.manifest,
        bootstrap=rules.supplementary.output.bootstrap,
        saturation=rules.supplementary.output.saturation,
        verdicts=rules.supplementary.output.verdicts,
        extremes=extremes_results,
        quant_eval=quant_eval_results,
        template=f"{workflow.basedir}/reports/templates/report.html.j2",
    output:
        # The report folder holds everything it links (files/: result and calibration files), links relative.
        report=f"{REPORTS}/report.html",
        files=directory(f"{REPORTS}/files"),
        # The same folder for Snakemake's own report (`snakemake --report report.zip`): embedded whole, so that the
        # maxact report's figures and links work inside it too.
        bundle=report(
            directory(f"{RESULTS}/maxact_report"),
            htmlindex="report.html",
            caption="../reports/captions/report.rst",
            category="Report",
        ),
        figures=report(
            directory(f"{REPORTS}/figures"),
            patterns=["{name}.png"],
            caption="../reports/captions/figures.rst",
            category="Figures",
        ),
        tables=report(
            directory(f"{REPORTS}/tables"),
            patterns=["{name}.csv"],
            caption="../reports/captions/tables.rst",
            category="Tables",
        ),
        cards=report(
            directory(f"{REPORTS}/cards"),
            patterns=["{name}.md"],
            caption="../reports/captions/cards.rst",
            category="Activation cards",
        ),
    params:
        study=config["study_name"],
        inputs=STUDY_INPUTS,
    conda:
        "../environment.yml"
    log:
        f"{LOGS}/render.log",
    script:
        "../workflow_scripts/render.py"
