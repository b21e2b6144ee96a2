from tests.capacity.conftest import catalog, frozen_clock  # noqa: F401
