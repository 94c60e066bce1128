rule tile_slide:
    input:
        slide=slide_path,
    output:
        h5="results/patches/{slide}.h5",
        qc="results/qc/tiling/{slide}.json",
        thumbnail=report(
            "results/qc/tiling/{slide}.png",
            caption="../workflow/report/tiling_thumbnail.rst",
            category="Tiling QC",
            subcategory="Thumbnails",
            labels={"slide": "{slide}"},
        ),
    log:
        "logs/tile_slide/{slide}.log",
    benchmark:
        "results/benchmarks/tile_slide/{slide}.tsv"
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        version=SHAZAM_VERSION,
        slide=slide_args,
        tiling=cli_args("tiling"),
    shell:
        "shazam tile --slide {input.slide:q} --slide-id {wildcards.slide}"
        " {params.slide} {params.tiling}"
        " --out-h5 {output.h5} --out-qc {output.qc} --out-thumbnail {output.thumbnail}"
        " > {log} 2>&1"


rule tiling_qc:
    input:
        expand("results/qc/tiling/{slide}.json", slide=SLIDE_IDS),
    output:
        report(
            "results/qc/tiling.tsv",
            caption="../workflow/report/tiling_qc.rst",
            category="Tiling QC",
            subcategory="Table",
            labels={"table": "tiling QC per slide"},
        ),
    log:
        "logs/tiling_qc/tiling_qc.log",
    benchmark:
        "results/benchmarks/tiling_qc/tiling_qc.tsv"
    localrule: True
    conda:
        "../envs/shazam.yaml"
    params:
        version=SHAZAM_VERSION,
    shell:
        "shazam tiling-qc --out {output} {input} > {log} 2>&1"
