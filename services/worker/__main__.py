from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared.service import run

run(WorkerService, WorkerSettings)
