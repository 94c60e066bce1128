# Teacher features: per teacher and group of slides (slide tasks), per teacher and tile task
# (ROI images). A group (extraction.slides_per_job, shazam.extraction.groups) is one job and one
# model load; it writes each slide's staged file and the group's table, and `feature_file`
# links each staged file to the slide's feature file. Touching one slide reruns its tiling and
# its group's extraction; asking for one feature file runs its group.


rule extract_features:
    input:
        patches=group_patches,
        slides=group_slides,
        weights=teacher_weights_input,
    output:
        layout.FEATURE_GROUP,
    log:
        "logs/extract_features/{teacher}/{group}.log",
    benchmark:
        "results/benchmarks/extract_features/{teacher}/{group}.tsv"
    wildcard_constraints:
        teacher=OWN_TEACHER_RE,
    priority: 2
    conda:
        "../envs/shazam.yaml"
    threads: config["extraction"]["num_workers"] + 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=lambda wc: 30 + 10 * len(EXTRACT_GROUPS[wc.group]),
    params:
        version=SHAZAM_VERSION,
        ids=lambda wc: EXTRACT_GROUPS[wc.group],
        staged=group_staged,
        weights=teacher_weights_param,
        extraction=section_json("extraction"),
    shell:
        "shazam extract --teacher {wildcards.teacher} --slide-id {params.ids}"
        " --slide {input.slides:q} --patches {input.patches} --out {params.staged}"
        " --table {output} --group {wildcards.group} --weights {params.weights:q}"
        " --threads {threads} --extraction {params.extraction:q} > {log} 2>&1"


rule feature_file:
    input:
        slide_group_table,
    output:
        layout.FEATURES,
    log:
        "logs/feature_file/{teacher}/{slide}.log",
    wildcard_constraints:
        teacher=OWN_TEACHER_RE,
    priority: 2
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        staged=layout.STAGED_FEATURES,
    shell:
        # a hard link: the same bytes, no copy; a copy where the file system has no links
        "(ln -f {params.staged:q} {output:q}"
        " || {{ cp {params.staged:q} {output:q}.tmp && mv {output:q}.tmp {output:q}; }}"
        " || {{ echo 'error: {params.staged} is missing; redo its group with"
        " snakemake --forcerun {input}'; exit 1; }}) > {log} 2>&1"


rule extraction_qc:
    input:
        [
            layout.FEATURE_GROUP.format(teacher=t, group=g)
            for t in OWN_TEACHERS
            for g in TRAIN_GROUPS
        ],
    output:
        report(
            layout.EXTRACTION_QC,
            caption="../workflow/report/extraction_qc.rst",
            category="Extraction QC",
            labels={"table": "extraction per slide and teacher"},
        ),
    log:
        "logs/extraction_qc/extraction_qc.log",
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
    shell:
        "shazam extraction-qc --out {output} {input} > {log} 2>&1"


rule extract_tile_features:
    input:
        images=lambda wc: task_source(wc.task),
        weights=teacher_weights_input,
    output:
        layout.TILE_FEATURES,
    log:
        "logs/extract_tile_features/{task}/{teacher}.log",
    benchmark:
        "results/benchmarks/extract_tile_features/{task}/{teacher}.tsv"
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
    conda:
        "../envs/shazam.yaml"
    threads: config["extraction"]["num_workers"] + 1
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        version=SHAZAM_VERSION,
        spec=lambda wc: task_spec_json(wc.task),
        weights=teacher_weights_param,
        target_mpp=config["tiling"]["target_mpp"],
        extraction=section_json("extraction"),
    shell:
        "shazam extract-tiles --spec {params.spec:q} --teacher {wildcards.teacher}"
        " --out {output} --weights {params.weights:q} --target-mpp {params.target_mpp}"
        " --threads {threads} --extraction {params.extraction:q} > {log} 2>&1"


rule export_tile_pt:
    input:
        layout.TILE_FEATURES,
    output:
        layout.TILE_PT,
    log:
        "logs/export_tile_pt/{task}/{teacher}.log",
    wildcard_constraints:
        task="|".join(TILE_TASKS) or "NO_TILE_TASK",
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
    shell:
        "shazam export-pt --features {input} --out {output} > {log} 2>&1"
