# Teacher features: per teacher and slide (slide tasks), per teacher and tile task (ROI images).


rule extract_features:
    input:
        patches=layout.PATCHES,
        slide=slide_path,
        weights=teacher_weights_input,
    output:
        layout.FEATURES,
    log:
        "logs/extract_features/{teacher}/{slide}.log",
    benchmark:
        "results/benchmarks/extract_features/{teacher}/{slide}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: config["extraction"]["num_workers"] + 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        version=SHAZAM_VERSION,
        weights=teacher_weights_param,
        extraction=section_json("extraction"),
    shell:
        "shazam extract --teacher {wildcards.teacher} --slide {input.slide:q}"
        " --slide-id {wildcards.slide} --patches {input.patches} --out {output}"
        " --weights {params.weights:q} --threads {threads}"
        " --extraction {params.extraction:q} > {log} 2>&1"


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
