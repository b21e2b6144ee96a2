from django.core.management.base import BaseCommand, CommandError, CommandParser

from capacity.drivers.slurm import inventory
from capacity.models import Cluster, GpuModel, Region
from core.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Import a Slurm cluster's GPU nodes into a Cluster (SLURM_CONF says which controller), "
        "or re-sync one imported before: new nodes are added, vanished ones retired, GPU "
        "counts follow Slurm. Prints what changed; running it twice changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cluster", required=True, help="our cluster code (created if new)")
        parser.add_argument("--region", help="region code; needed to create the cluster")
        parser.add_argument("--gpu-model", help="GPU model slug; needed to create the cluster")
        parser.add_argument("--fabric", default="", help="e.g. 'InfiniBand NDR 400 Gb/s'")
        parser.add_argument(
            "--partition",
            default="",
            help="only this Slurm partition's nodes (default: every GPU node; a re-sync keeps "
            "to the one partition the cluster's nodes share)",
        )

    def handle(self, *args: object, **options: str) -> None:
        region = gpu_model = None
        if options["region"]:
            region = Region.objects.filter(code=options["region"]).first()
            if region is None:
                raise CommandError(f"No region with the code {options['region']!r}.")
        if options["gpu_model"]:
            gpu_model = GpuModel.objects.filter(slug=options["gpu_model"]).first()
            if gpu_model is None:
                raise CommandError(f"No GPU model with the slug {options['gpu_model']!r}.")
        try:
            nodes = inventory.read_nodes(partition=options["partition"])
            existing = Cluster.objects.filter(code=options["cluster"]).first()
            if existing is not None and not options["partition"] and not (region or gpu_model):
                result = inventory.cluster_resync(cluster=existing, actor=None, nodes=nodes)
            else:
                result = inventory.cluster_sync(
                    code=options["cluster"],
                    nodes=nodes,
                    region=region,
                    gpu_model=gpu_model,
                    fabric=options["fabric"],
                )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(result.summary())
