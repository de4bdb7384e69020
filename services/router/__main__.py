from services.router.service import RouterService, RouterSettings
from shared.service import run

if __name__ == "__main__":
    run(RouterService, RouterSettings)
