rule tile_slide:
    input:
        slide=slide_path,
    output:
        h5=layout.PATCHES,
        qc=layout.TILING_QC,
        thumbnail=report(
            layout.THUMBNAIL,
            caption="../workflow/report/tiling_thumbnail.rst",
            category="Tiling QC",
            subcategory="Thumbnails",
            labels={"slide": "{slide}"},
        ),
    log:
        "logs/tile_slide/{slide}.log",
    benchmark:
        "results/benchmarks/tile_slide/{slide}.tsv"
    priority: 2  # the slide path is the longest chain (see make_demo_data)
    conda:
        "../envs/shazam.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        version=SHAZAM_VERSION,
        slide=slide_args,
        tiling=section_json("tiling"),
    shell:
        "shazam tile --slide {input.slide:q} --slide-id {wildcards.slide}"
        " {params.slide} --tiling {params.tiling:q}"
        " --out-h5 {output.h5} --out-qc {output.qc} --out-thumbnail {output.thumbnail}"
        " > {log} 2>&1"


rule tiling_qc:
    input:
        expand(layout.TILING_QC, slide=SLIDE_IDS),
    output:
        report(
            layout.QC_TABLE,
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
