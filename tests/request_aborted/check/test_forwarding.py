"""RA101 (token not forwarded) and RA103 (CancellationToken.NONE with a token in scope)."""

from __future__ import annotations

from pathlib import Path

from request_aborted._check import check_paths

from ._support import FIXTURES, check, lines, places


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


REPOSITORY = """
from request_aborted import CancellationToken

class ProductRepository:
    async def find(self, query: str, token: CancellationToken) -> list[str]:
        token.raise_if_cancellation_requested()
        return [query]
"""


def test_ra101_reports_each_call_that_drops_the_token_in_scope() -> None:
    # self.method(), plain function, keyword-only defaulted token, constructor, local instance,
    # a token from current_token(), and a call inside a closure.
    assert lines(check("ra101_bad.py", select="RA101")) == [
        ("RA101", 26),
        ("RA101", 30),
        ("RA101", 31),
        ("RA101", 32),
        ("RA101", 33),
        ("RA101", 40),
        ("RA101", 45),
    ]


def test_ra101_is_quiet_when_the_token_is_forwarded_or_the_callee_is_unknown() -> None:
    assert check("ra101_good.py") == []


def test_ra101_message_names_the_callee_its_parameter_and_the_token_to_pass() -> None:
    finding = check("ra101_bad.py", select="RA101")[0]
    assert finding.message == (
        "`Report.render()` accepts a cancellation token (`token`) but none is passed: "
        "forward `token`"
    )
    assert (finding.line, finding.col) == (26, 22)


def test_ra101_follows_service_attributes_and_imports_into_other_modules() -> None:
    assert places(check("shop", select="RA101")) == [
        ("RA101", "shop/routes.py", 24),  # module attribute: repository.warm_cache()
        ("RA101", "shop/routes.py", 25),  # Annotated[SearchService, Depends(...)] parameter
        ("RA101", "shop/service.py", 15),  # self._repository from __init__'s annotation
        ("RA101", "shop/service.py", 16),  # keyword-only token with a default
    ]


def test_ra101_reports_nothing_when_the_callee_module_is_not_analysed() -> None:
    assert check("shop/service.py", select="RA101") == []


def test_ra101_resolves_namespace_packages_without_init_files(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "repositories/products.py": REPOSITORY,
            "services/search.py": (
                "from repositories.products import ProductRepository\n"
                "from request_aborted import CancellationToken\n"
                "async def search(repo: ProductRepository, token: CancellationToken) -> None:\n"
                "    await repo.find('q')\n"
            ),
        },
    )
    findings = check_paths([root / "services", root / "repositories"], select=["RA101"])
    assert places(findings, root) == [("RA101", "services/search.py", 4)]


def test_ra101_finds_methods_inherited_from_an_analysed_base_and_through_super(
    tmp_path: Path,
) -> None:
    source = REPOSITORY + (
        "class CachedRepository(ProductRepository):\n"
        "    async def find(self, query: str, token: CancellationToken) -> list[str]:\n"
        "        return await super().find(query)\n"
        "class Service:\n"
        "    repo: CachedRepository\n"
        "    async def run(self, token: CancellationToken) -> None:\n"
        "        await self.repo.find('q')\n"
    )
    root = write(tmp_path, {"shop.py": source})
    assert lines(check_paths([root], select=["RA101"])) == [("RA101", 10), ("RA101", 14)]


def test_ra101_stays_quiet_when_a_base_class_is_not_analysed(tmp_path: Path) -> None:
    source = (
        "from request_aborted import CancellationToken\n"
        "from somewhere import Base\n"
        "class Repo(Base):\n"
        "    async def find(self, query: str, token: CancellationToken) -> None:\n"
        "        token.raise_if_cancellation_requested()\n"
        "    async def run(self, token: CancellationToken) -> None:\n"
        "        await self.find('q', token)\n"
        "        await self.reload()\n"
        "async def use(repo: Repo, token: CancellationToken) -> None:\n"
        "    await repo.find('q')\n"  # find is Repo's own, even with an unknown base
    )
    root = write(tmp_path, {"repo.py": source})
    assert lines(check_paths([root], select=["RA101"])) == [("RA101", 10)]


def test_ra101_stays_quiet_when_a_name_is_bound_to_two_different_things(tmp_path: Path) -> None:
    source = REPOSITORY + (
        "class Other:\n"
        "    async def find(self, query: str) -> list[str]:\n"
        "        return []\n"
        "async def run(flag: bool, token: CancellationToken) -> None:\n"
        "    repo = ProductRepository() if flag else Other()\n"
        "    repo = Other()\n"
        "    await repo.find('q')\n"
    )
    root = write(tmp_path, {"repo.py": source})
    assert check_paths([root], select=["RA101"]) == []


def test_ra101_types_with_targets_from_context_managers(tmp_path: Path) -> None:
    source = REPOSITORY + (
        "import contextlib\n"
        "from collections.abc import AsyncIterator\n"
        "from typing import Self\n"
        "class UnitOfWork:\n"
        "    def __init__(self) -> None:\n"
        "        self.products = ProductRepository()\n"
        "    async def __aenter__(self) -> Self:\n"
        "        return self\n"
        "class Database:\n"
        "    @contextlib.asynccontextmanager\n"
        "    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:\n"
        "        yield UnitOfWork()\n"
        "async def run(database: Database, token: CancellationToken) -> None:\n"
        "    async with database.unit_of_work() as uow:\n"
        "        await uow.products.find('q')\n"
        "    async with UnitOfWork() as entered:\n"
        "        await entered.products.find('q')\n"
    )
    root = write(tmp_path, {"uow.py": source})
    assert lines(check_paths([root], select=["RA101"])) == [("RA101", 22), ("RA101", 24)]


def test_ra103_reports_the_none_token_passed_while_a_token_is_in_scope() -> None:
    assert lines(check("ra103_bad.py", select="RA103")) == [
        ("RA103", 14),
        ("RA103", 15),
        ("RA103", 21),
    ]


def test_ra103_is_quiet_without_a_token_in_scope_or_when_marked() -> None:
    assert check("ra103_good.py") == []


def test_a_token_bound_mid_function_is_only_in_scope_after_its_binding(tmp_path: Path) -> None:
    source = (
        "from request_aborted import CancellationToken, current_token\n"
        "async def fetch(token: CancellationToken) -> None:\n"
        "    token.raise_if_cancellation_requested()\n"
        "async def run() -> None:\n"
        "    await fetch(CancellationToken.NONE)\n"
        "    token = current_token()\n"
        "    await fetch(CancellationToken.NONE)\n"
    )
    root = write(tmp_path, {"late.py": source})
    assert lines(check_paths([root])) == [("RA103", 7)]


def test_fixtures_directory_holds_one_good_and_one_bad_file_per_rule() -> None:
    names = {path.name for path in FIXTURES.glob("ra1*.py")}
    rules = ("ra101", "ra102", "ra103", "ra104", "ra105")
    assert names == {f"{rule}_{kind}.py" for rule in rules for kind in ("bad", "good")}
