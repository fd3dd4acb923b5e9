/*
 * hugepfn crosscheck guest probe: replays one scenario's steps against the real vfio-pci
 * driver of the guest kernel and prints what user space saw.
 *
 *   probe STEPFILE OUTPUT
 *
 * STEPFILE is written by the host (hugepfn/crosscheck/stepfile.py documents each line);
 * OUTPUT is where result lines go (the guest's second serial port).  What the kernel did
 * inside (driver calls, inserts, log lines) is read by this program from tracefs and
 * /dev/kmsg after every step, so each step's output is self-contained:
 *
 *   R <index> <ret> [key=value ...]   the step's result (0 or -errno, as the syscall gave it)
 *   G <tid> <signo> <code> <addr> <lsb>   a signal a thread's handler received during the step
 *   D <pid> <status>                   a scenario process died (killed by a signal: "sig=N")
 *   K <line>                           a tracefs event line (kprobes) recorded during the step
 *   L <prio> <text>                    a kernel log record printed during the step
 *   B <index>                          start of the step (lines before it are setup)
 *   E <index>                          end of the step
 *   X <message>                        the probe itself could not do something (setup error)
 *
 * Processes and threads get the pids/tids the scenario names (ns_last_pid is written just
 * before each fork/clone, as CRIU does), and each process sets its comm, so the kernel's own
 * lines ("Sending SIGBUS to qemu:4242 ...") read as the model prints them.  Every thread
 * runs a command loop on its own FIFO; the controller (this program's first process, not a
 * scenario process) sends one step at a time and waits for the reply.  A thread's SIGBUS or
 * SIGSEGV handler records siginfo and, when the signal interrupted a load or store of a step,
 * jumps back out of it (the access is not retried), as a test program's handler would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEVS 64      /* indexed by PCI slot number */
#define MAX_TASKS 64
#define MAX_SIGS 256
#define LINE 4096
#define STEP_TIMEOUT_MS 20000

static FILE *out;
static char fifo_dir[96] = "/tmp/xc";   /* $XC_FIFO_DIR overrides (tests on a host) */

static void emit(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(out, fmt, ap);
	va_end(ap);
	fputc('\n', out);
	fflush(out);
}

static unsigned long long num(const char *s)
{
	return strtoull(s, NULL, 0);
}

/* ---- devices ------------------------------------------------------------------------ */

struct dev {
	int fd;
	char bdf[32];
	unsigned long long region_offset[VFIO_PCI_NUM_REGIONS];
};
static struct dev devs[MAX_DEVS];
static int container = -1;

static int open_device(int slot, const char *bdf, int group_no)
{
	if (slot < 0 || slot >= MAX_DEVS)
		return -EINVAL;
	char path[64];
	struct vfio_group_status status = { .argsz = sizeof(status) };
	int group, fd, i;

	if (container < 0) {
		container = open("/dev/vfio/vfio", O_RDWR);
		if (container < 0)
			return -errno;
	}
	snprintf(path, sizeof(path), "/dev/vfio/%d", group_no);
	group = open(path, O_RDWR);
	if (group < 0)
		return -errno;
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0)
		return -errno;
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -EPERM;
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		return -errno;
	/* the first group makes the container usable; later ones share its IOMMU */
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0 && errno != EBUSY)
		return -errno;
	fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (fd < 0)
		return -errno;
	devs[slot].fd = fd;
	snprintf(devs[slot].bdf, sizeof(devs[slot].bdf), "%s", bdf);
	for (i = 0; i < VFIO_PCI_NUM_REGIONS; i++) {
		struct vfio_region_info info = { .argsz = sizeof(info), .index = i };
		if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &info) == 0) {
			devs[slot].region_offset[i] = info.offset;
			emit("X region %d %d flags=0x%x size=0x%llx offset=0x%llx", slot, i, info.flags,
			     (unsigned long long)info.size, (unsigned long long)info.offset);
		}
	}
	return 0;
}

/* ---- tasks ------------------------------------------------------------------------------ */

struct sigrec {
	int signo, code, tid;
	unsigned long long addr;
	int lsb;
};

static int parked_pid;      /* "park N": above every pid and tid the scenario names (0: no parking) */

struct task {
	int pid, tid;
	int cmd_fd;          /* controller side: write end of the thread's FIFO */
	int pidfd;           /* main threads: to see the process die */
	int dead;
};
static struct task tasks[MAX_TASKS];
static int ntasks;
static int reply_fd = -1;   /* controller: read end of the reply FIFO */

/* per thread, in the scenario processes */
static __thread sigjmp_buf access_jmp;
static __thread volatile int in_access;
static __thread struct sigrec sigs[MAX_SIGS];
static __thread volatile int nsigs;
static int my_reply_fd = -1;  /* scenario processes: write end of the reply FIFO */

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static void on_signal(int signo, siginfo_t *info, void *uc)
{
	(void)uc;
	if (nsigs < MAX_SIGS) {
		struct sigrec *r = &sigs[nsigs++];
		r->signo = signo;
		r->code = info->si_code;
		r->tid = gettid_();
		r->addr = (unsigned long long)(uintptr_t)info->si_addr;
		r->lsb = (signo == SIGBUS && (info->si_code == BUS_MCEERR_AR || info->si_code == BUS_MCEERR_AO))
			 ? info->si_addr_lsb : 0;
	}
	if (in_access) {
		in_access = 0;
		siglongjmp(access_jmp, 1);
	}
}

static void install_handlers(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO;       /* no SA_RESTART: a blocked read returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

static int set_last_pid(int want)
{
	int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
	char buf[32];
	int n, ok;
	if (fd < 0)
		return -errno;
	n = snprintf(buf, sizeof(buf), "%d", want - 1);
	ok = write(fd, buf, n) == n ? 0 : -errno;
	close(fd);
	return ok;
}

static void fifo_path(char *buf, size_t len, int tid)
{
	snprintf(buf, len, "%s/cmd.%d", fifo_dir, tid);
}

static int read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;
	while (n + 1 < len) {
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = 0;
	return (int)n;
}

static void reply(const char *fmt, ...)
{
	char buf[LINE * 4];
	int n, i;
	va_list ap;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 64, fmt, ap);
	va_end(ap);
	buf[n++] = '\n';
	for (i = 0; i < nsigs && n < (int)sizeof(buf) - 128; i++)
		n += snprintf(buf + n, sizeof(buf) - n, "G %d %d %d 0x%llx %d\n", sigs[i].tid, sigs[i].signo,
			      sigs[i].code, sigs[i].addr, sigs[i].lsb);
	nsigs = 0;
	n += snprintf(buf + n, sizeof(buf) - n, ".\n");
	if (write(my_reply_fd, buf, n) != n)
		_exit(111);
}

static void *thread_main(void *arg);
static void worker_loop(int cmd_fd);

/* Run one access in the calling thread; 1 if a signal stopped it. */
static int one_access(unsigned long long addr, int write_it)
{
	if (sigsetjmp(access_jmp, 1))
		return 1;
	in_access = 1;
	if (write_it)
		*(volatile uint8_t *)(uintptr_t)addr = 0xa5;
	else
		(void)*(volatile uint8_t *)(uintptr_t)addr;
	in_access = 0;
	return 0;
}

static int spawn_thread(int tid)
{
	pthread_t th;
	char path[128];
	int fd, r;
	fifo_path(path, sizeof(path), tid);
	mkfifo(path, 0600);
	fd = open(path, O_RDWR);
	if (fd < 0)
		return -errno;
	r = set_last_pid(tid);
	if (r)
		return r;
	if (pthread_create(&th, NULL, thread_main, (void *)(intptr_t)fd))
		return -EAGAIN;
	pthread_detach(th);
	return 0;
}

static void *thread_main(void *arg)
{
	worker_loop((int)(intptr_t)arg);
	return NULL;
}

static int become_process(int pid, const char *comm, int cmd_fd)
{
	(void)pid;
	prctl(PR_SET_NAME, comm, 0, 0, 0);
	install_handlers();
	worker_loop(cmd_fd);
	_exit(0);
}

/* The command loop of every scenario thread.  Tokens: see stepfile.py. */
static void worker_loop(int cmd_fd)
{
	char line[LINE];
	char *tok[16];
	for (;;) {
		int n = 0;
		char *save = NULL, *p;
		if (read_line(cmd_fd, line, sizeof(line)) < 0)
			_exit(112);
		for (p = strtok_r(line, " ", &save); p && n < 16; p = strtok_r(NULL, " ", &save))
			tok[n++] = p;
		if (!n)
			continue;
		const char *op = tok[0];
		errno = 0;
		if (!strcmp(op, "hello")) {
			reply("R 0 tid=%d", gettid_());
		} else if (!strcmp(op, "collect")) {
			reply("R 0");
		} else if (!strcmp(op, "mmap")) {
			/* mmap FD OFFSET LENGTH ADDR SHARED PROT */
			int fd = (int)num(tok[1]);
			void *want = (void *)(uintptr_t)num(tok[4]);
			int flags = MAP_FIXED | (num(tok[5]) ? MAP_SHARED : MAP_PRIVATE);
			void *got = mmap(want, num(tok[3]), (int)num(tok[6]), flags, fd, (off_t)num(tok[2]));
			reply("R %d", got == MAP_FAILED ? -errno : 0);
		} else if (!strcmp(op, "munmap")) {
			reply("R %d", munmap((void *)(uintptr_t)num(tok[1]), num(tok[2])) ? -errno : 0);
		} else if (!strcmp(op, "mprotect")) {
			reply("R %d", mprotect((void *)(uintptr_t)num(tok[1]), num(tok[2]), (int)num(tok[3])) ? -errno : 0);
		} else if (!strcmp(op, "madvise")) {
			reply("R %d", madvise((void *)(uintptr_t)num(tok[1]), num(tok[2]), (int)num(tok[3])) ? -errno : 0);
		} else if (!strcmp(op, "mremap")) {
			/* mremap OLD OLDLEN NEWLEN FLAGS NEW */
			void *got = mremap((void *)(uintptr_t)num(tok[1]), num(tok[2]), num(tok[3]), (int)num(tok[4]),
					   (void *)(uintptr_t)num(tok[5]));
			reply("R %d addr=0x%llx", got == MAP_FAILED ? -errno : 0,
			      got == MAP_FAILED ? 0ULL : (unsigned long long)(uintptr_t)got);
		} else if (!strcmp(op, "access")) {
			int stopped = one_access(num(tok[1]), (int)num(tok[2]));
			reply("R 0 signalled=%d", stopped);
		} else if (!strcmp(op, "touch")) {
			/* touch ADDR LENGTH STRIDE WRITE */
			unsigned long long a = num(tok[1]), end = a + num(tok[2]), stride = num(tok[3]);
			unsigned long long count = 0, stop = 0;
			int w = (int)num(tok[4]), hit = 0;
			for (; a < end; a += stride) {
				count++;
				if (one_access(a, w)) {
					hit = 1;
					stop = a;
					break;
				}
			}
			if (hit)
				reply("R 0 accesses=%llu stopped_at=0x%llx", count, stop);
			else
				reply("R 0 accesses=%llu", count);
		} else if (!strcmp(op, "prctl")) {
			long r = prctl((int)num(tok[1]), num(tok[2]), num(tok[3]), num(tok[4]), num(tok[5]));
			reply("R %ld", r < 0 ? (long)-errno : r);
		} else if (!strcmp(op, "write")) {
			/* write PATH VALUE: a sysfs/procfs write by this thread (it is `current`) */
			int fd = open(tok[1], O_WRONLY);
			int r;
			if (fd < 0) {
				reply("R %d", -errno);
				continue;
			}
			r = write(fd, tok[2], strlen(tok[2])) < 0 ? -errno : 0;
			close(fd);
			reply("R %d", r);
		} else if (!strcmp(op, "thread")) {
			reply("R %d", spawn_thread((int)num(tok[1])));
		} else if (!strcmp(op, "fork")) {
			/* fork CHILDPID COMM: the child is a new scenario process, single-threaded */
			int child = (int)num(tok[1]);
			char path[128];
			int fd, r;
			fifo_path(path, sizeof(path), child);
			mkfifo(path, 0600);
			fd = open(path, O_RDWR);
			r = set_last_pid(child);
			if (fd < 0 || r) {
				reply("R %d", fd < 0 ? -errno : r);
				continue;
			}
			pid_t got = fork();
			if (got == 0) {
				nsigs = 0;
				become_process(child, tok[2], fd);
			}
			close(fd);
			reply("R %d pid=%d", got < 0 ? -errno : 0, (int)got);
		} else if (!strcmp(op, "exit")) {
			_exit((int)num(tok[1]));
		} else {
			reply("R %d unknown=%s", -ENOSYS, op);
		}
	}
}

/* ---- controller ------------------------------------------------------------------------- */

static struct task *task_of(int tid)
{
	int i;
	for (i = 0; i < ntasks; i++)
		if (tasks[i].tid == tid)
			return &tasks[i];
	return NULL;
}

/* Check pidfds: a process that died since the last look is printed once. */
static void reap(void)
{
	int i;
	for (i = 0; i < ntasks; i++) {
		struct task *t = &tasks[i];
		struct pollfd pfd;
		if (t->dead || t->pidfd < 0)
			continue;
		pfd.fd = t->pidfd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 0) == 1) {
			siginfo_t si;
			int j;
			memset(&si, 0, sizeof(si));
			/* our own children can be waited for; grandchildren (forked by a step) are reaped
			 * by their parent process, so the pidfd's readiness is the fact we report */
			if (waitid(P_PIDFD, t->pidfd, &si, WEXITED | WNOHANG) == 0 && si.si_pid) {
				if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED)
					emit("D %d sig=%d", t->pid, si.si_status);
				else
					emit("D %d exit=%d", t->pid, si.si_status);
			} else {
				/* not our child: the zombie's exit_code is the last field of its stat */
				char path[64], buf[LINE];
				FILE *f;
				int status = -1;
				snprintf(path, sizeof(path), "/proc/%d/stat", t->pid);
				f = fopen(path, "r");
				if (f && fgets(buf, sizeof(buf), f)) {
					char *last = strrchr(buf, ' ');
					status = last ? atoi(last + 1) : -1;
				}
				if (f)
					fclose(f);
				if (status >= 0 && WIFSIGNALED(status))
					emit("D %d sig=%d", t->pid, WTERMSIG(status));
				else if (status >= 0)
					emit("D %d exit=%d", t->pid, WEXITSTATUS(status));
				else
					emit("D %d gone", t->pid);
			}
			for (j = 0; j < ntasks; j++)
				if (tasks[j].pid == t->pid)
					tasks[j].dead = 1;
		}
	}
}

/* Wait for one reply (lines up to "."), printing R and G lines; -1 if the task died. */
static int wait_reply(struct task *t, char *first, size_t len)
{
	char line[LINE];
	int elapsed = 0;
	first[0] = 0;
	for (;;) {
		struct pollfd pfd = { .fd = reply_fd, .events = POLLIN };
		int r = poll(&pfd, 1, 100);
		if (r == 1) {
			if (read_line(reply_fd, line, sizeof(line)) < 0)
				return -1;
			if (!strcmp(line, "."))
				return 0;
			if (line[0] == 'R' && !first[0])
				snprintf(first, len, "%s", line);
			else
				emit("%s", line);
			continue;
		}
		reap();
		if (t->dead)
			return -1;
		elapsed += 100;
		if (elapsed > STEP_TIMEOUT_MS) {
			emit("X timeout waiting for tid %d", t->tid);
			return -2;
		}
	}
}

static int send_cmd(struct task *t, const char *fmt, ...)
{
	char buf[LINE];
	int n;
	va_list ap;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	buf[n++] = '\n';
	return write(t->cmd_fd, buf, n) == n ? 0 : -errno;
}

static void add_task(int pid, int tid, int pidfd)
{
	char path[128];
	struct task *t = &tasks[ntasks++];
	t->pid = pid;
	t->tid = tid;
	t->pidfd = pidfd;
	t->dead = 0;
	fifo_path(path, sizeof(path), tid);
	mkfifo(path, 0600);
	t->cmd_fd = open(path, O_RDWR);
}

static int start_process(int pid, const char *comm, int *tids, int n)
{
	char path[128], first[LINE];
	int fd, r, i, pidfd;
	pid_t got;
	fifo_path(path, sizeof(path), pid);
	mkfifo(path, 0600);
	fd = open(path, O_RDWR);
	if (fd < 0)
		return -errno;
	r = set_last_pid(pid);
	if (r)
		return r;
	got = fork();
	if (got < 0)
		return -errno;
	if (got == 0)
		become_process(pid, comm, fd);
	close(fd);
	pidfd = (int)syscall(SYS_pidfd_open, got, 0);
	add_task(pid, pid, pidfd);
	if (got != pid) {
		emit("X pid %d wanted, got %d", pid, (int)got);
		return -EADDRINUSE;
	}
	for (i = 1; i < n; i++) {
		struct task *main_thread = task_of(pid);
		if (main_thread->dead)
			return -ESRCH;
		send_cmd(main_thread, "thread %d", tids[i]);
		if (wait_reply(main_thread, first, sizeof(first)) || strcmp(first, "R 0")) {
			emit("X thread %d of %d: %s", tids[i], pid, first);
			return -EAGAIN;
		}
		add_task(pid, tids[i], -1);
	}
	for (i = 0; i < n; i++) {
		struct task *t = task_of(tids[i]);
		const char *said;
		send_cmd(t, "hello");
		wait_reply(t, first, sizeof(first));
		said = strstr(first, "tid=");
		if (!said || atoi(said + 4) != tids[i]) {
			emit("X tid %d wanted, got %s", tids[i], first);
			return -EADDRINUSE;
		}
	}
	return 0;
}

/* Kill the process start_process made from tasks[mark] on, wait for it, and forget its tasks. */
static void drop_process(int mark)
{
	int i;
	if (mark < ntasks && tasks[mark].pidfd >= 0) {
		siginfo_t si;
		syscall(SYS_pidfd_send_signal, tasks[mark].pidfd, SIGKILL, NULL, 0);
		waitid(P_PIDFD, tasks[mark].pidfd, &si, WEXITED);
		close(tasks[mark].pidfd);
	}
	for (i = mark; i < ntasks; i++)
		if (tasks[i].cmd_fd >= 0)
			close(tasks[i].cmd_fd);
	ntasks = mark;
}

/* start_process until every pid and tid is the one the scenario names.  The probe gets them by
 * writing ns_last_pid just before fork() or pthread_create(); a kernel thread created in
 * between (a kworker, in the same pid space) takes that pid first and ours gets the next one.
 * The model prints and signals the scenario's tids, so such a process is killed and started
 * again (a few times: the kworker that raced it has its pid now). */
static int start_process_exactly(int pid, const char *comm, int *tids, int n)
{
	int attempt, r = -EADDRINUSE;
	for (attempt = 0; attempt < 5 && r == -EADDRINUSE; attempt++) {
		int mark = ntasks;
		if (attempt) {
			struct timespec pause = { 0, 50 * 1000 * 1000 };
			nanosleep(&pause, NULL);        /* a short-lived task (a usermode helper) is gone by then */
		}
		r = start_process(pid, comm, tids, n);
		if (r == -EADDRINUSE)
			drop_process(mark);
	}
	return r;
}

/* Move the guest's pid counter past every pid a scenario names (they are below parked_pid, the
 * step file's "park" line), after each setup line and step: the kworkers and helpers the kernel
 * starts meanwhile then take pids above it, not the next scenario's (a kworker that got 4243
 * between two scenarios would keep it for minutes, and a later scenario's thread 4243 would come
 * out as 4244). */
static void park_pid_counter(void)
{
	if (parked_pid)
		set_last_pid(parked_pid + 1);
}

static void copy_file(const char *path, const char *prefix, int truncate_after)
{
	char buf[LINE];
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(buf, sizeof(buf), f)) {
		size_t n = strlen(buf);
		if (n && buf[n - 1] == '\n')
			buf[n - 1] = 0;
		if (buf[0] == '#' || !buf[0])
			continue;
		emit("%s %s", prefix, buf);
	}
	fclose(f);
	if (truncate_after) {
		int fd = open(path, O_WRONLY | O_TRUNC);
		if (fd >= 0)
			close(fd);
	}
}

static int kmsg_fd = -1;

static void drain_kmsg(void)
{
	char buf[LINE];
	for (;;) {
		ssize_t n = read(kmsg_fd, buf, sizeof(buf) - 1);
		char *text, *comma;
		if (n < 0) {
			if (errno == EPIPE)
				continue;   /* records were overwritten: read on */
			break;
		}
		buf[n] = 0;
		/* "prio,seq,usec,flags;text\n[ continuation lines]" */
		text = strchr(buf, ';');
		comma = strchr(buf, ',');
		if (!text || !comma)
			continue;
		*comma = 0;
		text++;
		{
			char *nl = strchr(text, '\n');
			if (nl)
				*nl = 0;
		}
		emit("L %d %s", atoi(buf) & 7, text);
	}
}

static void after_step(int index)
{
	char first[LINE];
	int i;
	/* every live thread reports the signals its handler saw */
	for (i = 0; i < ntasks; i++) {
		struct task *t = &tasks[i];
		if (t->dead)
			continue;
		if (send_cmd(t, "collect") == 0)
			wait_reply(t, first, sizeof(first));
	}
	reap();
	copy_file("/sys/kernel/tracing/trace", "K", 1);
	drain_kmsg();
	emit("E %d", index);
}

static int controller_op(char **tok, int n, char *result, size_t len)
{
	const char *op = tok[2];
	if (!strcmp(op, "config_write")) {
		/* config_write 0 SLOT OFFSET SIZE VALUE */
		struct dev *d = &devs[num(tok[4])];
		unsigned long long v = num(tok[7]);
		int size = (int)num(tok[6]);
		ssize_t r = pwrite(d->fd, &v, size, d->region_offset[VFIO_PCI_CONFIG_REGION_INDEX] + num(tok[5]));
		snprintf(result, len, "%d", r == size ? 0 : (r < 0 ? -errno : -EIO));
	} else if (!strcmp(op, "reset")) {
		int r = ioctl(devs[num(tok[4])].fd, VFIO_DEVICE_RESET);
		snprintf(result, len, "%d", r < 0 ? -errno : 0);
	} else if (!strcmp(op, "feature")) {
		/* feature 0 SLOT FLAGS */
		struct vfio_device_feature f = { .argsz = sizeof(f), .flags = (uint32_t)num(tok[5]) };
		int r = ioctl(devs[num(tok[4])].fd, VFIO_DEVICE_FEATURE, &f);
		snprintf(result, len, "%d", r < 0 ? -errno : 0);
	} else if (!strcmp(op, "write")) {
		int fd = open(tok[4], O_WRONLY), r;
		if (fd < 0) {
			snprintf(result, len, "%d", -errno);
			return 0;
		}
		r = write(fd, tok[5], strlen(tok[5])) < 0 ? -errno : 0;
		close(fd);
		snprintf(result, len, "%d", r);
	} else if (!strcmp(op, "sleep")) {
		struct timespec ts = { .tv_sec = (time_t)(num(tok[4]) / 1000),
				       .tv_nsec = (long)(num(tok[4]) % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		snprintf(result, len, "0");
	} else {
		(void)n;
		snprintf(result, len, "%d", -ENOSYS);
	}
	return 0;
}

/* "@SLOT.INDEX+OFFSET" -> the guest physical address OFFSET into BAR INDEX of device SLOT
 * (as the guest kernel placed it: line INDEX+1 of the device's sysfs resource file). */
static const char *resolve_token(const char *tok, char *buf, size_t len)
{
	char path[128], line[256];
	int slot, index, i;
	unsigned long long off, start = 0;
	FILE *f;
	if (tok[0] != '@' || sscanf(tok, "@%d.%d+%lli", &slot, &index, &off) != 3 || slot < 0 || slot >= MAX_DEVS)
		return tok;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/resource", devs[slot].bdf);
	f = fopen(path, "r");
	for (i = 0; f && i <= index && fgets(line, sizeof(line), f); i++)
		if (i == index)
			start = strtoull(line, NULL, 0);
	if (f)
		fclose(f);
	snprintf(buf, len, "0x%llx", start + off);
	return buf;
}

/* step INDEX KIND TID ARGS...: TID 0 runs in the controller, else in that thread. */
static void run_step(char **tok, int n)
{
	int index = atoi(tok[1]);
	int tid = atoi(tok[3]);
	char buf[LINE], first[LINE], resolved[16][32];
	int i, k = 0;
	for (i = 4; i < n && i < 16; i++)
		tok[i] = (char *)resolve_token(tok[i], resolved[i], sizeof(resolved[i]));
	drain_kmsg();   /* what the kernel printed before the step is not the step's */
	emit("B %d", index);
	if (!tid) {
		controller_op(tok, n, buf, sizeof(buf));
		emit("R %d %s", index, buf);
		after_step(index);
		return;
	}
	struct task *t = task_of(tid);
	if (!t || t->dead) {
		emit("R %d -ESRCH", index);
		after_step(index);
		return;
	}
	/* the worker's op is the kind with the device slot replaced by its fd for mmap */
	k += snprintf(buf + k, sizeof(buf) - k, "%s", tok[2]);
	for (i = 4; i < n; i++) {
		if (!strcmp(tok[2], "mmap") && i == 4) {
			/* mmap TID SLOT REGION OFFSET LENGTH ADDR SHARED PROT -> mmap FD FILEOFF LENGTH ADDR SHARED PROT */
			struct dev *d = &devs[num(tok[4])];
			unsigned long long region = num(tok[5]);
			unsigned long long off = (region < VFIO_PCI_NUM_REGIONS ? d->region_offset[region] : region << 40) + num(tok[6]);
			if (!d->bdf[0])
				off = num(tok[6]);   /* a memdev: no regions */
			k += snprintf(buf + k, sizeof(buf) - k, " %d 0x%llx", d->fd, off);
			i = 6;
			continue;
		}
		k += snprintf(buf + k, sizeof(buf) - k, " %s", tok[i]);
	}
	send_cmd(t, "%s", buf);
	int r = wait_reply(t, first, sizeof(first));
	if (r == -1)
		emit("R %d killed", index);
	else if (r == -2)
		emit("R %d timeout", index);
	else
		emit("R %d %s", index, first + 2);
	after_step(index);
}

int main(int argc, char **argv)
{
	char line[LINE], path[128];
	char *tok[32];
	FILE *steps;
	if (argc < 3) {
		fprintf(stderr, "usage: probe STEPFILE OUTPUT\n");
		return 2;
	}
	steps = fopen(argv[1], "r");
	out = fopen(argv[2], "w");
	if (!steps || !out) {
		fprintf(stderr, "probe: cannot open %s or %s\n", argv[1], argv[2]);
		return 2;
	}
	if (getenv("XC_FIFO_DIR"))
		snprintf(fifo_dir, sizeof(fifo_dir), "%s", getenv("XC_FIFO_DIR"));
	mkdir(fifo_dir, 0700);
	snprintf(path, sizeof(path), "%s/reply", fifo_dir);
	mkfifo(path, 0600);
	reply_fd = open(path, O_RDWR);
	my_reply_fd = reply_fd;   /* inherited by the scenario processes */
	kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	lseek(kmsg_fd, 0, SEEK_END);
	signal(SIGCHLD, SIG_DFL);
	while (fgets(line, sizeof(line), steps)) {
		int n = 0;
		char *save = NULL, *p;
		size_t len = strlen(line);
		if (len && line[len - 1] == '\n')
			line[len - 1] = 0;
		if (line[0] == '#' || !line[0])
			continue;
		for (p = strtok_r(line, " ", &save); p && n < 32; p = strtok_r(NULL, " ", &save))
			tok[n++] = p;
		if (!strcmp(tok[0], "scenario")) {
			emit("S %s", n > 1 ? tok[1] : "?");
		} else if (!strcmp(tok[0], "park")) {
			/* park PID: where the pid counter waits between steps (park_pid_counter) */
			parked_pid = atoi(tok[1]);
		} else if (!strcmp(tok[0], "bdf")) {
			/* bdf SLOT BDF: where a BAR-relative address of the device is resolved */
			int slot = atoi(tok[1]);
			if (slot >= 0 && slot < MAX_DEVS)
				snprintf(devs[slot].bdf, sizeof(devs[slot].bdf), "%s", tok[2]);
		} else if (!strcmp(tok[0], "memdev")) {
			/* memdev SLOT SIZE: a memfd stands in for a device (tests of the probe on a host
			 * without vfio); every region is at file offset 0 */
			int slot = atoi(tok[1]) & (MAX_DEVS - 1);
			int fd = (int)syscall(SYS_memfd_create, "xc-memdev", 0);
			if (fd < 0 || ftruncate(fd, (off_t)num(tok[2])) < 0)
				emit("X memdev %d: %d", slot, -errno);
			devs[slot].fd = fd;
			emit("X open memdev %d: 0", slot);
		} else if (!strcmp(tok[0], "dev")) {
			/* dev SLOT BDF: the vfio group is the device's iommu_group in sysfs */
			char link[256], target[256];
			ssize_t len;
			int group_no = -1, r;
			snprintf(link, sizeof(link), "/sys/bus/pci/devices/%s/iommu_group", tok[2]);
			len = readlink(link, target, sizeof(target) - 1);
			if (len > 0) {
				target[len] = 0;
				group_no = atoi(strrchr(target, '/') ? strrchr(target, '/') + 1 : target);
			}
			r = group_no < 0 ? -ENOENT : open_device(atoi(tok[1]), tok[2], group_no);
			emit("X open %s: %d", tok[2], r);
		} else if (!strcmp(tok[0], "proc")) {
			/* proc PID COMM TID... */
			int tids[MAX_TASKS], i, m = 0;
			for (i = 3; i < n && m < MAX_TASKS; i++)
				tids[m++] = atoi(tok[i]);
			int r = start_process_exactly(atoi(tok[1]), tok[2], tids, m);
			if (r)
				emit("X process %s: %d", tok[1], r);
		} else if (!strcmp(tok[0], "forked")) {
			/* forked PID: a fork step made this process; the controller learns its FIFO */
			int pid = atoi(tok[1]);
			add_task(pid, pid, (int)syscall(SYS_pidfd_open, pid, 0));
		} else if (!strcmp(tok[0], "step")) {
			run_step(tok, n);
			if (!strcmp(tok[2], "fork")) {
				int child = atoi(tok[4]);
				if (!task_of(child))
					add_task(child, child, (int)syscall(SYS_pidfd_open, child, 0));
			}
		} else if (!strcmp(tok[0], "end")) {
			break;
		}
		park_pid_counter();
		drain_kmsg();   /* lines between steps (device open, process start) are not any step's */
	}
	/* the scenario processes exit; then the device files close */
	{
		int i;
		for (i = 0; i < ntasks; i++) {
			if (!tasks[i].dead && tasks[i].pid == tasks[i].tid) {
				send_cmd(&tasks[i], "exit 0");
			}
		}
		for (i = 0; i < ntasks; i++) {
			if (tasks[i].pidfd >= 0 && !tasks[i].dead) {
				struct pollfd pfd = { .fd = tasks[i].pidfd, .events = POLLIN };
				poll(&pfd, 1, 5000);
				siginfo_t si;
				waitid(P_PIDFD, tasks[i].pidfd, &si, WEXITED | WNOHANG);
			}
		}
		for (i = 0; i < MAX_DEVS; i++)
			if (devs[i].fd > 0)
				close(devs[i].fd);
		if (container >= 0)
			close(container);
	}
	drain_kmsg();
	emit("Q");
	return 0;
}
