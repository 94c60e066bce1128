# External validation (config `external`): per cohort and task with labels (a slide task's
# label file; a tile task's images, which carry their labels when they have them: without, the
# report says so), the internal report's metrics, CIs and paired comparison on the cohort
# (shazam external-report, from the prediction tables of rules/predict.smk); per slide
# cohort, its tiling QC table.


rule external_report:
    input:
        predictions=lambda wc: prediction_files(wc.cohort, wc.task),
        summary=f"{layout.REPORT_DIR}/summary.tsv",
        heatmaps=lambda wc: (
            task_heatmaps(wc.task) if wc.cohort in HEATMAP_COHORTS else []
        ),
    output:
        metrics=report(
            f"{layout.EXTERNAL_DIR}/metrics.tsv",
            caption="../workflow/report/external_metrics.rst",
            category="{task}",
            subcategory="External {cohort}",
            labels={"task": "{task}", "cohort": "{cohort}", "table": "metrics"},
        ),
        comparison=report(
            f"{layout.EXTERNAL_DIR}/comparison.tsv",
            caption="../workflow/report/external_comparison.rst",
            category="{task}",
            subcategory="External {cohort}",
            labels={
                "task": "{task}",
                "cohort": "{cohort}",
                "table": "paired comparison",
            },
        ),
        markdown=f"{layout.EXTERNAL_DIR}/report.md",
        html=report(
            layout.EXTERNAL_HTML,
            caption="../workflow/report/external_report.rst",
            category="{task}",
            subcategory="External {cohort}",
            labels={"task": "{task}", "cohort": "{cohort}", "file": "report"},
        ),
        figures=report(
            directory(f"{layout.EXTERNAL_DIR}/figures"),
            patterns=["{name}.png"],
            caption="../workflow/report/external_figures.rst",
            category="{task}",
            subcategory="External {cohort}",
            labels={"task": "{task}", "cohort": "{cohort}", "figure": "{name}"},
        ),
    log:
        "logs/external_report/{cohort}/{task}.log",
    benchmark:
        "results/benchmarks/external_report/{cohort}/{task}.tsv"
    wildcard_constraints:
        task="|".join(TASKS) or "NO_TASK",
        cohort="|".join(
            re.escape(n) for n, c in EXTERNAL.items() if c.labels or c.images
        )
        or "NO_COHORT",
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        evaluation=section_json("evaluation"),
        heatmaps=lambda wc, input: (
            "--heatmaps " + " ".join(f"{d}/index.tsv" for d in input.heatmaps)
            if input.heatmaps
            else ""
        ),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "shazam external-report --spec {params.spec:q} --cohort {wildcards.cohort}"
        " --predictions {input.predictions} --summary {input.summary}"
        " --evaluation {params.evaluation:q} {params.heatmaps}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule external_tiling_qc:
    input:
        lambda wc: expand(layout.TILING_QC, slide=COHORT_SLIDES[wc.cohort]),
    output:
        report(
            layout.EXTERNAL_QC,
            caption="../workflow/report/tiling_qc.rst",
            category="Tiling QC",
            subcategory="External {cohort}",
            labels={"table": "tiling QC of external cohort {cohort}"},
        ),
    log:
        "logs/external_tiling_qc/{cohort}.log",
    wildcard_constraints:
        cohort="|".join(re.escape(n) for n in COHORT_SLIDES) or "NO_COHORT",
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
    shell:
        "shazam tiling-qc --out {output} {input} > {log} 2>&1"
