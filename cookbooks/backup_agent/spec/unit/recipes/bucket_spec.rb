require_relative '../../spec_helper'

describe 'backup_agent::bucket' do
  include_context 'with backup_agent data bag'

  let(:setup) { false }
  let(:run_list) { [described_recipe] }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
      node.override['backup_agent']['bucket']['setup'] = setup
    end.converge(*run_list)
  end
  let(:setup_execute) { chef_run.execute('backup-agent bucket setup') }
  let(:due) { false }

  # The guard asks the recipe (resource blocks reach the helpers through it).
  before { allow_any_instance_of(Chef::Recipe).to receive(:backup_agent_bucket_setup_due?).and_return(due) }

  it 'installs and configures the agent first' do
    expect(chef_run).to include_recipe('backup_agent::default')
  end

  it 'runs `bucket setup` with the rendered config, at the end of the run, after the config renders' do
    expect(setup_execute.command).to eq(%w(/opt/backup-agent/bin/backup-agent -c /etc/backup-agent/config.yaml bucket setup))
    expect(setup_execute.action).to eq([:nothing])
    delayed = chef_run.run_context.delayed_actions.map { |n| [n.resource.to_s, n.action] }
    expect(delayed.index([BackupAgentSpec::CONFIG_TEMPLATE, :create])).to be < delayed.index(['execute[backup-agent bucket setup]', :run])
  end

  it 'runs it only when the config or the agent changed since the last setup: a no-op converge calls nothing' do
    expect(chef_run).not_to run_execute('backup-agent bucket setup')
  end

  context 'when the config changed since the last setup' do
    let(:due) { true }

    it 'runs it, then records what it applied' do
      expect(chef_run).to run_execute('backup-agent bucket setup')
      expect(setup_execute).to notify('file[/var/lib/backup-agent/chef-bucket-setup]').to(:create).immediately
      expect(chef_run.file('/var/lib/backup-agent/chef-bucket-setup')).to do_nothing
    end
  end

  context 'from the default recipe' do
    let(:run_list) { ['backup_agent::default'] }

    it 'is left out unless node[\'backup_agent\'][\'bucket\'][\'setup\'] is true' do
      expect(chef_run).not_to include_recipe('backup_agent::bucket')
    end

    context 'with bucket setup on' do
      let(:setup) { true }

      it 'is included' do
        expect(chef_run).to include_recipe('backup_agent::bucket')
      end
    end
  end
end
