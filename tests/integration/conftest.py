from tests.integration.fixtures_cluster import cluster_factory, pytest_runtest_makereport  # noqa: F401
from tests.integration.fixtures_guest import guest_image, guests, hypervisors, vms  # noqa: F401
from tests.integration.fixtures_zk import zk_chroot, zk_server  # noqa: F401
